//! Which process this is among the processes of one training run, read from
//! the environment variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
//! MASTER_ADDR, MASTER_PORT), so a multi-machine run launches the way
//! PyTorch users already do: `torchrun --nnodes 2 --nproc-per-node 1 ...`
//! or the same variables set by hand or by a scheduler.
//!
//! One process drives all the devices it is given (`--gpus`, or `--cpu
//! --replicas k`); its replicas are `RANK * k .. RANK * k + k` of
//! `WORLD_SIZE * k`, so every process must drive the same number. On GPUs
//! NCCL's own bootstrap does the rendezvous: with `NCCL_COMM_ID=host:port`
//! set, every rank derives the same unique id from the address and rank 0
//! listens there (NVIDIA/nccl issue 730 describes the mechanism);
//! communicator `part` listens on MASTER_PORT + 1 + part, since torchrun's
//! own store already holds MASTER_PORT. CPU runs meet over TCP at
//! MASTER_PORT + 1 (`dist::tcp`), on MASTER_ADDR only; a launcher
//! that reserved that port by binding it can hand rank 0 the bound socket
//! instead (ALEXNET_LISTEN_FD, the inherited descriptor's number), so the
//! port is never free for another program to take in between.
use std::time::Duration;

use crate::error::{Error, Result};

/// This process's place in the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// Whether LOCAL_RANK was set: without --gpus it picks the GPU.
    pub local_rank_set: bool,
    /// LOCAL_WORLD_SIZE: the run's processes on this machine, which share
    /// its memory (1 when unset).
    pub local_size: usize,
    /// MASTER_ADDR and MASTER_PORT: where rank 0 listens (None: one process).
    pub master: Option<(String, u16)>,
    /// ALEXNET_LISTEN_FD: rank 0's listening socket for the CPU all-reduce,
    /// inherited already bound at MASTER_ADDR:MASTER_PORT + 1.
    pub listen_fd: Option<i32>,
    /// ALEXNET_CONNECT_TIMEOUT (seconds, default 120): how long the CPU
    /// ranks wait for each other to start, for launchers that start the
    /// processes minutes apart.
    pub connect_for: Duration,
    /// ALEXNET_PEER_TIMEOUT (seconds, default 600): how long a CPU rank
    /// waits on another once training runs (a validation or checkpoint
    /// much slower in one process) before calling it stopped or hung.
    pub peer_for: Duration,
    /// CUDA_VISIBLE_DEVICES as set: GPU ordinals count within its list,
    /// which a launcher may set for each process (srun --gpus-per-task).
    pub visible_gpus: Option<String>,
}

/// The ranks' meeting time when ALEXNET_CONNECT_TIMEOUT is not set.
pub const CONNECT_FOR: Duration = Duration::from_secs(120);
/// The wait on a silent rank when ALEXNET_PEER_TIMEOUT is not set.
pub const PEER_FOR: Duration = Duration::from_secs(600);

/// The variable `key` as a wait of 1 to 86400 whole seconds, `default`
/// when unset; an error naming it otherwise.
fn seconds(var: impl Fn(&str) -> Option<String>, key: &str, default: Duration) -> Result<Duration> {
    let Some(v) = var(key) else {
        return Ok(default);
    };
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|s| (1..=86_400).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            Error::Config(format!(
                "{key}={v}: not a whole number of seconds from 1 to 86400; unset it for the default {} s",
                default.as_secs()
            ))
        })
}

/// `addr:port`, an IPv6 address in brackets (`[::1]:29501`), as NCCL
/// reads it and as messages should show it.
pub fn host_port(addr: &str, port: usize) -> String {
    match addr.contains(':') && !addr.starts_with('[') {
        true => format!("[{addr}]:{port}"),
        false => format!("{addr}:{port}"),
    }
}

/// Whether `addr` is the unspecified address (0.0.0.0, ::), which binds
/// every interface and reaches no other machine.
fn unspecified(addr: &str) -> bool {
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// `host:port` or `[v6]:port`: one colon cannot be an IPv6 address, and
/// a bracketed one ends at its bracket.
fn with_a_port(addr: &str) -> bool {
    addr.matches(':').count() == 1 || (addr.starts_with('[') && !addr.ends_with(']'))
}

impl World {
    /// The whole run in this process.
    pub fn single() -> World {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_rank_set: false,
            local_size: 1,
            master: None,
            listen_fd: None,
            connect_for: CONNECT_FOR,
            peer_for: PEER_FOR,
            visible_gpus: None,
        }
    }

    /// From the process environment.
    pub fn from_env() -> Result<World> {
        let w = World::from_vars(|k| std::env::var(k).ok())?;
        if let Some(note) = w.unshared_note(std::env::var_os("LOCAL_WORLD_SIZE").is_some()) {
            tracing::warn!("{note}");
        }
        Ok(w)
    }

    /// A process that is not its machine's first (LOCAL_RANK above 0) but
    /// was not told how many share the machine (LOCAL_WORLD_SIZE) plans
    /// its loader threads and host memory as if it were alone there.
    pub fn unshared_note(&self, local_size_given: bool) -> Option<String> {
        (self.local_rank > 0 && !local_size_given).then(|| {
            format!(
                "LOCAL_RANK={} without LOCAL_WORLD_SIZE: this process plans its loader threads and host memory as if it ran alone on this machine; set LOCAL_WORLD_SIZE to the run's processes here (torchrun sets both)",
                self.local_rank
            )
        })
    }

    /// From `var` (the environment, or a table in tests). No WORLD_SIZE, or
    /// 1, is a single process (with no RANK above 0); otherwise RANK,
    /// MASTER_ADDR and MASTER_PORT must be there and make sense, and the
    /// error names what is wrong.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<World> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    Error::Config(format!(
                        "{k}={v}: not a whole number; torchrun sets it, or set it by hand"
                    ))
                }),
            }
        };
        let size = num("WORLD_SIZE")?.unwrap_or(1);
        let local_rank_set = num("LOCAL_RANK")?.is_some();
        let local_rank = num("LOCAL_RANK")?.unwrap_or(0);
        if size == 0 {
            return Err(Error::Config(
                "WORLD_SIZE=0: a run has at least one process".into(),
            ));
        }
        let local_given = num("LOCAL_WORLD_SIZE")?;
        let local_size = local_given.unwrap_or(1);
        if local_size == 0 || local_size > size {
            return Err(Error::Config(format!(
                "LOCAL_WORLD_SIZE={local_size} with WORLD_SIZE={size}: the processes on this machine number from 1 to {size}"
            )));
        }
        // LOCAL_RANK picks this process's GPU when --gpus is not given; past
        // the machine's processes it names one no process should take.
        if local_given.is_some() && local_rank >= local_size {
            return Err(Error::Config(format!(
                "LOCAL_RANK={local_rank} with LOCAL_WORLD_SIZE={local_size}: the processes on this machine number 0 to {}",
                local_size - 1
            )));
        }
        if size == 1 {
            // A RANK above 0 alone means a launch that lost WORLD_SIZE: this
            // process would train by itself and write a run folder.
            if let Some(rank) = num("RANK")?.filter(|r| *r > 0) {
                return Err(Error::Config(format!(
                    "RANK={rank} but WORLD_SIZE is {}: set WORLD_SIZE to the run's number of processes in each, or unset RANK for a run of one process",
                    var("WORLD_SIZE").map_or("unset".into(), |v| v.trim().to_string())
                )));
            }
            return Ok(World {
                local_rank,
                local_rank_set,
                visible_gpus: var("CUDA_VISIBLE_DEVICES"),
                ..World::single()
            });
        }
        let rank = num("RANK")?.ok_or_else(|| {
            Error::Config(format!(
                "WORLD_SIZE={size} but no RANK: set RANK (0 to {}) in each process, or launch with torchrun",
                size - 1
            ))
        })?;
        if rank >= size {
            return Err(Error::Config(format!(
                "RANK={rank} with WORLD_SIZE={size}: ranks run from 0 to {}",
                size - 1
            )));
        }
        let addr = var("MASTER_ADDR").filter(|a| !a.trim().is_empty()).ok_or_else(|| {
            Error::Config(format!(
                "WORLD_SIZE={size} but no MASTER_ADDR: set it to the address of the rank-0 machine (as for torchrun)"
            ))
        })?;
        if with_a_port(addr.trim()) {
            return Err(Error::Config(format!(
                "MASTER_ADDR={}: an address with a port; give the host alone, and the port in MASTER_PORT (as for torchrun)",
                addr.trim()
            )));
        }
        if unspecified(addr.trim()) {
            return Err(Error::Config(format!(
                "MASTER_ADDR={}: the address of no machine (\"any\"): rank 0 would listen on every interface, and the other ranks would look for it on their own machines; set it to rank 0's address (127.0.0.1 for processes on one machine)",
                addr.trim()
            )));
        }
        let port = var("MASTER_PORT").ok_or_else(|| {
            Error::Config(format!(
                "WORLD_SIZE={size} but no MASTER_PORT: set it to a free port on {addr} (as for torchrun)"
            ))
        })?;
        let port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0 && *p < u16::MAX - 8)
            .ok_or_else(|| {
                Error::Config(format!(
                    "MASTER_PORT={port}: not a port number below {}; the run also uses the next few ports",
                    u16::MAX - 8
                ))
            })?;
        let listen_fd = match var("ALEXNET_LISTEN_FD") {
            None => None,
            Some(v) => Some(v.trim().parse::<i32>().ok().filter(|fd| *fd >= 0).ok_or_else(
                || {
                    Error::Config(format!(
                        "ALEXNET_LISTEN_FD={v}: not a file descriptor number; unset it, or give the descriptor of the inherited listening socket"
                    ))
                },
            )?),
        };
        if listen_fd.is_some() && rank != 0 {
            return Err(Error::Config(format!(
                "ALEXNET_LISTEN_FD is set for RANK={rank}: only rank 0 listens; unset it in the other processes"
            )));
        }
        let connect_for = seconds(&var, "ALEXNET_CONNECT_TIMEOUT", CONNECT_FOR)?;
        let peer_for = seconds(&var, "ALEXNET_PEER_TIMEOUT", PEER_FOR)?;
        Ok(World {
            rank,
            size,
            local_rank,
            local_rank_set,
            local_size,
            master: Some((addr.trim().to_string(), port)),
            listen_fd,
            connect_for,
            peer_for,
            visible_gpus: var("CUDA_VISIBLE_DEVICES"),
        })
    }

    pub fn is_single(&self) -> bool {
        self.size == 1
    }

    /// Rank 0 writes checkpoints, metrics and charts; the others train.
    pub fn is_writer(&self) -> bool {
        self.rank == 0
    }

    /// `NCCL_COMM_ID` for communicator `part` (None: one process, where
    /// NCCL needs no rendezvous). IPv6 addresses go in brackets.
    pub fn nccl_comm_id(&self, part: usize) -> Option<String> {
        let (addr, port) = self.master.as_ref()?;
        Some(host_port(addr, *port as usize + 1 + part))
    }

    /// The NCCL ranks of this process's `k` local replicas, and the total.
    pub fn ranks(&self, k: usize) -> (std::ops::Range<usize>, usize) {
        (self.rank * k..(self.rank + 1) * k, self.size * k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<World> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn no_variables_is_one_process() {
        assert_eq!(world(&[]).unwrap(), World::single());
        assert_eq!(world(&[("WORLD_SIZE", "1")]).unwrap(), World::single());
        assert_eq!(world(&[("RANK", "0")]).unwrap(), World::single());
    }

    #[test]
    fn torchrun_variables_give_rank_and_rendezvous() {
        let w = world(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "10.0.0.7"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.size, w.is_writer()), (2, 4, false));
        assert_eq!(w.nccl_comm_id(0).as_deref(), Some("10.0.0.7:29501"));
        assert_eq!(w.nccl_comm_id(1).as_deref(), Some("10.0.0.7:29502"));
        // Two GPUs per process: ranks 4 and 5 of 8.
        assert_eq!(w.ranks(2), (4..6, 8));
        let v6 = world(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "fe80::1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap();
        assert_eq!(v6.nccl_comm_id(0).as_deref(), Some("[fe80::1]:29501"));
        assert_eq!((w.listen_fd, v6.listen_fd), (None, None));
        let handed = world(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("ALEXNET_LISTEN_FD", "3"),
        ])
        .unwrap();
        assert_eq!(handed.listen_fd, Some(3));
        assert_eq!((w.local_size, handed.local_size), (1, 1));
        assert_eq!(w.connect_for, Duration::from_secs(120));
        let patient = world(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
            ("ALEXNET_CONNECT_TIMEOUT", " 900"),
        ]);
        let patient = patient.unwrap();
        assert_eq!(patient.connect_for, Duration::from_secs(900));
        assert_eq!(
            (w.peer_for, patient.peer_for),
            (Duration::from_secs(600), Duration::from_secs(600))
        );
        let slow_peers = world(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
            ("ALEXNET_PEER_TIMEOUT", "3600 "),
        ]);
        assert_eq!(slow_peers.unwrap().peer_for, Duration::from_secs(3600));
        let shared = world(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
        ]);
        assert_eq!(shared.unwrap().local_size, 2);
    }

    /// A port in MASTER_ADDR (as torchrun's --rdzv-endpoint takes it) is
    /// refused by name; IPv6 addresses, bracketed or not, are not ports.
    #[test]
    fn a_port_in_the_master_address_is_refused() {
        let with = |addr: &str| {
            world(&[
                ("WORLD_SIZE", "2"),
                ("RANK", "1"),
                ("MASTER_ADDR", addr),
                ("MASTER_PORT", "29500"),
            ])
        };
        for addr in ["127.0.0.1:29500", "node7:29500", "[fe80::1]:29500"] {
            let e = with(addr).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("MASTER_ADDR={addr}: an address with a port"))
                    && e.contains("the port in MASTER_PORT"),
                "{e}"
            );
        }
        for addr in ["10.0.0.7", "fe80::1", "[fe80::1]", "::1", "node7"] {
            assert!(with(addr).is_ok(), "{addr}");
        }
    }

    #[test]
    fn local_rank_is_noted_as_set_or_not() {
        let vars = [
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "29500"),
        ];
        assert!(!world(&vars).unwrap().local_rank_set);
        let set = [&vars[..], &[("LOCAL_RANK", "0")]].concat();
        assert!(world(&set).unwrap().local_rank_set);
        // CUDA_VISIBLE_DEVICES is kept as given, in one process or several.
        assert_eq!(world(&vars).unwrap().visible_gpus, None);
        let seen = [&vars[..], &[("CUDA_VISIBLE_DEVICES", "2,3")]].concat();
        assert_eq!(world(&seen).unwrap().visible_gpus.as_deref(), Some("2,3"));
        let one = world(&[("CUDA_VISIBLE_DEVICES", "")]).unwrap();
        assert_eq!(one.visible_gpus.as_deref(), Some(""));
    }

    #[test]
    fn a_later_local_rank_without_the_local_world_size_is_noted() {
        let second = World {
            local_rank: 1,
            ..World::single()
        };
        let note = second.unshared_note(false).unwrap();
        assert!(
            note.starts_with("LOCAL_RANK=1 without LOCAL_WORLD_SIZE"),
            "{note}"
        );
        assert_eq!(second.unshared_note(true), None);
        assert_eq!(World::single().unshared_note(false), None);
    }

    #[test]
    fn missing_or_bad_variables_are_errors_naming_them() {
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Vars, &str); 20] = [
            (
                &[
                    ("WORLD_SIZE", "4"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("LOCAL_RANK", "2"),
                ],
                "LOCAL_RANK=2 with LOCAL_WORLD_SIZE=2: the processes on this machine number 0 to 1",
            ),
            (&[("RANK", "1")], "RANK=1 but WORLD_SIZE is unset"),
            (
                &[("WORLD_SIZE", "1"), ("RANK", "3")],
                "RANK=3 but WORLD_SIZE is 1",
            ),
            (&[("LOCAL_WORLD_SIZE", "0")], "LOCAL_WORLD_SIZE=0"),
            (
                &[("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "3")],
                "LOCAL_WORLD_SIZE=3 with WORLD_SIZE=2",
            ),
            (&[("WORLD_SIZE", "2")], "RANK"),
            (&[("WORLD_SIZE", "2"), ("RANK", "2")], "RANK=2"),
            (&[("WORLD_SIZE", "2"), ("RANK", "1")], "MASTER_ADDR"),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h")],
                "MASTER_PORT",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "http"),
                ],
                "MASTER_PORT=http",
            ),
            (&[("WORLD_SIZE", "two")], "WORLD_SIZE=two"),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "0"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "29500"),
                    ("ALEXNET_LISTEN_FD", "stdin"),
                ],
                "ALEXNET_LISTEN_FD=stdin",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "29500"),
                    ("ALEXNET_LISTEN_FD", "0"),
                ],
                "only rank 0 listens",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "29500"),
                    ("ALEXNET_CONNECT_TIMEOUT", "2m"),
                ],
                "ALEXNET_CONNECT_TIMEOUT=2m: not a whole number of seconds",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "0"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "29500"),
                    ("ALEXNET_CONNECT_TIMEOUT", "0"),
                ],
                "ALEXNET_CONNECT_TIMEOUT=0",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "29500"),
                    ("ALEXNET_PEER_TIMEOUT", "0"),
                ],
                "ALEXNET_PEER_TIMEOUT=0: not a whole number of seconds from 1 to 86400; unset it for the default 600 s",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "29500"),
                    ("ALEXNET_PEER_TIMEOUT", "86401"),
                ],
                "ALEXNET_PEER_TIMEOUT=86401",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "  "),
                    ("MASTER_PORT", "29500"),
                ],
                "WORLD_SIZE=2 but no MASTER_ADDR",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "0"),
                ],
                "MASTER_PORT=0: not a port number below 65527",
            ),
            (
                &[
                    ("WORLD_SIZE", "2"),
                    ("RANK", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "65527"),
                ],
                "MASTER_PORT=65527: not a port number below 65527",
            ),
        ];
        for (vars, want) in cases {
            let msg = world(vars).unwrap_err().to_string();
            assert!(msg.contains(want), "{vars:?}: {msg}");
        }
    }
}
