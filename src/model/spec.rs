//! What names a network: the config from the table (`alexnet`, `alexnet-half`,
//! `cifar`), the ablation switches and the class count. Checkpoints store
//! this, not the table itself, and rebuild the table from it, so a
//! checkpoint can never disagree with the code about what a layer is.
use serde::{Deserialize, Serialize};

use super::topology::Topology;
use crate::error::Result;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// A name `Topology::by_name` knows.
    pub config: String,
    /// Ablation: no local response normalisation.
    pub no_lrn: bool,
    /// Pooling window other than the config's 3 (2: non-overlapping).
    pub pool: Option<usize>,
    /// Outputs of the last layer, when not the config's own.
    pub classes: Option<usize>,
}

impl NetSpec {
    pub fn new(config: &str) -> NetSpec {
        NetSpec {
            config: config.to_string(),
            no_lrn: false,
            pool: None,
            classes: None,
        }
    }

    /// The table this spec names.
    pub fn topology(&self) -> Result<Topology> {
        let mut t = Topology::by_name(&self.config)?;
        if self.no_lrn {
            t = t.without_lrn();
        }
        if let Some(p) = self.pool {
            t = t.with_pool_size(p)?;
        }
        if let Some(c) = self.classes {
            if c != t.classes {
                t = t.with_classes(c)?;
            }
        }
        Ok(t)
    }
}
