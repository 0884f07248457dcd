//! What every process of a run must hold alike, checked once before the
//! first step: the network, the run's options, the data's size, classes and
//! preparation, the step and schedule state it starts from, the weights and
//! momentum themselves (a CRC-32: `--init-from`, or another checkpoint at
//! the same step), the device layout and the precision. Processes started
//! with other flags, data or checkpoint would otherwise average gradients
//! of different models, or wait forever for a step another process never
//! takes.
//!
//! One collective does it, the trainer's `any_process` (an OR over the
//! processes): each field's CRC-32 goes out as 64 flags, its 32 bits and
//! their complements. Where the processes agree, each pair holds exactly one
//! yes; a pair with two means two processes hold different values. So every
//! process learns which fields differ, and all stop with the same error.
use serde::Serialize;

use crate::checkpoint::{network_tensors, tensors_crc32, RunState};
use crate::dist::World;
use crate::error::{Error, Result};
use crate::model::trainable::Model;
use crate::run_state::RunOptions;

const BITS: usize = 32;

/// One thing the processes must share: its name and its value as text.
#[derive(Clone)]
pub struct Field {
    pub name: String,
    pub value: String,
}

fn field<T: Serialize + ?Sized>(name: &str, v: &T) -> Field {
    Field {
        name: name.into(),
        value: serde_json::to_string(v).unwrap_or_else(|e| format!("({e})")),
    }
}

/// The fields of `state` (as the run starts), the layout's `shape` and the
/// `precision`. Left out: what each process holds of its own (elapsed
/// time, its shard's loss sums) and the data's path, which may differ by
/// machine.
pub fn fields(state: &RunState, shape: &str, precision: &str) -> Vec<Field> {
    let p = &state.progress;
    let mut f = vec![
        field("layout", shape),
        field("--precision", precision),
        field("network", &state.net),
        field("classes", &state.classes),
        field("training images", &state.train_images),
        field("validation images", &state.val_images),
        field("validation split", &state.val_digest),
        field("preparation", &state.preprocess),
    ];
    // Every field, named (no `..`): a new option must be placed here.
    let RunOptions {
        epochs,
        batch,
        lr,
        momentum,
        weight_decay,
        schedule,
        val,
        limit,
        seed,
        crop,
        init,
        demo,
        warmup,
        dropout,
        limit_by_class,
    } = &state.options;
    f.extend([
        field("--epochs", epochs),
        field("--batch", batch),
        field("--lr", lr),
        field("momentum", momentum),
        field("weight decay", weight_decay),
        field(
            "schedule (--lr-milestones, --patience, --max-drops)",
            schedule,
        ),
        field("--val", val),
        field("--limit", limit),
        field("--seed", seed),
        field("--crop", crop),
        field("--recipe", init),
        field("--demo", demo),
        field("--warmup", warmup),
        field("--dropout", dropout),
        field("--limit's draw by class", limit_by_class),
    ]);
    f.extend([
        field("step", &p.step),
        field("epoch", &(p.epoch, p.batches_done, p.epoch_done)),
        field("current learning rate", &p.lr),
        field("schedule state", &(p.best_err, p.since_best, p.drops)),
        field("loss scale", &p.loss_scale),
    ]);
    f
}

/// Stop, with every other process, where the processes of `world` hold
/// any field of `state`, `shape` or `precision`, the rate a resume set by
/// hand (`--lr`: it also skips the next epoch's milestone, so it counts
/// even where the rates are equal), or `net`'s weights and momentum,
/// differently.
pub fn across(
    net: &mut dyn Model,
    (state, lr_by_hand): (&RunState, Option<f32>),
    (shape, precision): (&str, &str),
    world: &World,
) -> Result<()> {
    if world.is_single() {
        return Ok(());
    }
    let mut fields = fields(state, shape, precision);
    fields.push(field("--lr given to the resume", &lr_by_hand));
    // Read once from the devices: 0.26 s for alexnet's 122M values on a
    // 2-core CPU, once per run.
    let crc = tensors_crc32(&network_tensors(net, true)?);
    fields.push(field(
        "starting weights and momentum",
        &format!("CRC-32 {crc:08x}"),
    ));
    let any = net.any_process(&flags(&fields))?;
    check(&differing(&fields, &any), world)
}

/// This process's say: for each field, its CRC's bits, then their complements.
pub fn flags(fields: &[Field]) -> Vec<bool> {
    let mut out = Vec::with_capacity(fields.len() * 2 * BITS);
    for f in fields {
        let crc = crc32fast::hash(f.value.as_bytes());
        out.extend((0..BITS).map(|i| crc >> i & 1 == 1));
        out.extend((0..BITS).map(|i| crc >> i & 1 == 0));
    }
    out
}

/// The fields some two processes hold differently, given the OR over all
/// processes of their `flags`.
pub fn differing<'f>(fields: &'f [Field], any: &[bool]) -> Vec<&'f Field> {
    fields
        .iter()
        .zip(any.chunks_exact(2 * BITS))
        .filter(|(_, a)| (0..BITS).any(|i| a[i] && a[BITS + i]))
        .map(|(f, _)| f)
        .collect()
}

/// The error for fields that differ: their names, this process's values
/// (each process says its own, so the logs side by side show both), and
/// the fix.
pub fn check(differ: &[&Field], world: &World) -> Result<()> {
    if differ.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = differ.iter().map(|f| f.name.as_str()).collect();
    let here: Vec<String> = differ
        .iter()
        .map(|f| format!("{} {}", f.name, shorten(&f.value)))
        .collect();
    Err(Error::Config(format!(
        "the processes of this run differ in: {}; this process (RANK {} of {}) has {}. Start every process with the same flags, the same data and the same --resume or --init-from file",
        names.join(", "),
        world.rank,
        world.size,
        here.join(", ")
    )))
}

/// A long value (the network, the classes) cut to its first 60
/// characters, with its length and CRC-32, which tell two values apart
/// where the cut does not.
fn shorten(v: &str) -> String {
    match v.char_indices().nth(60) {
        Some((i, _)) => format!(
            "{}... ({} characters, CRC-32 {:08x})",
            &v[..i],
            v.chars().count(),
            crc32fast::hash(v.as_bytes())
        ),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{check, differing, flags, Field};
    use crate::dist::World;

    fn rank(rank: usize) -> World {
        World {
            rank,
            size: 3,
            master: Some(("h".into(), 29500)),
            ..World::single()
        }
    }

    fn fields(values: &[&str]) -> Vec<Field> {
        let names = ["batch", "seed", "network"];
        names
            .iter()
            .zip(values)
            .map(|(n, v)| Field {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    /// The OR of the processes' flags, as `any_process` returns it.
    fn or(all: &[Vec<Field>]) -> Vec<bool> {
        let says: Vec<Vec<bool>> = all.iter().map(|f| flags(f)).collect();
        (0..says[0].len())
            .map(|i| says.iter().any(|s| s[i]))
            .collect()
    }

    #[test]
    fn the_fields_two_processes_hold_differently_are_found_and_named() {
        let a = fields(&["128", "1", "\"alexnet\""]);
        let same = or(&[fields(&["128", "1", "\"alexnet\""]), a.clone()]);
        assert!(differing(&a, &same).is_empty());
        assert!(check(&differing(&a, &same), &rank(0)).is_ok());

        let b = fields(&["128", "2", "\"alexnet\""]);
        let c = fields(&["64", "1", "\"alexnet\""]);
        let any = or(&[a.clone(), b, c]);
        let names: Vec<&str> = differing(&a, &any)
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["batch", "seed"]);
        let e = check(&differing(&a, &any), &rank(2))
            .unwrap_err()
            .to_string();
        assert!(e.contains("differ in: batch, seed"), "{e}");
        assert!(
            e.contains("this process (RANK 2 of 3) has batch 128, seed 1"),
            "{e}"
        );
    }

    /// Two long values alike in their first 60 characters (class lists
    /// that differ in the last class) still read differently.
    #[test]
    fn long_values_that_differ_past_the_cut_read_differently() {
        let classes = |last: &str| {
            let mut c: Vec<String> = (0..20).map(|i| format!("n{i:08}")).collect();
            c.push(last.into());
            serde_json::to_string(&c).unwrap()
        };
        let (a, b) = (classes("n99999998"), classes("n99999999"));
        let said = |v: &str| {
            let f = [Field {
                name: "classes".into(),
                value: v.into(),
            }];
            check(&f.iter().collect::<Vec<_>>(), &rank(0))
                .unwrap_err()
                .to_string()
        };
        let (ea, eb) = (said(&a), said(&b));
        assert_ne!(ea, eb);
        let crc = format!("CRC-32 {:08x}", crc32fast::hash(a.as_bytes()));
        assert!(
            ea.contains(&format!("({} characters, {crc})", a.len())),
            "{ea}"
        );
    }
}
