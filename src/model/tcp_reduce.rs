//! The all-reduce across processes for CPU replicas: what NCCL is to GPUs,
//! over plain TCP, so a multi-process run (torchrun's variables, `world.rs`)
//! trains on CPU devices too and the multi-process path is tested without a
//! GPU.
//!
//! Rank 0 listens on MASTER_PORT + 1 and every other rank connects (retrying
//! while rank 0 starts). For each tensor, every rank sends its replicas'
//! buffers to rank 0, which sums all of them in global replica order (rank
//! by rank, then local order), scales by 1/k and sends the mean back. That
//! is the order `HostAllReduce` sums k replicas of one process in, so W
//! processes of k replicas compute bit for bit what one process of W x k
//! does. A star, not a ring: simple and exact, fine for CPU-sized models.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::replicas::{add, add_replicas, scale, upload_all, AllReduce};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::world::World;

/// How long ranks wait for each other to start, and for a peer's data.
const CONNECT_FOR: Duration = Duration::from_secs(120);
const READ_FOR: Duration = Duration::from_secs(600);

/// This process's end of the all-reduce.
pub struct TcpAllReduce {
    rank: usize,
    /// Rank 0: a stream to each rank 1..W, in rank order. Others: to rank 0.
    peers: Vec<TcpStream>,
    /// Local replicas per process (the same on every rank).
    local: usize,
    ranks: usize,
    sum: Vec<f32>,
    part: Vec<f32>,
    bytes: Vec<u8>,
}

fn net_err(what: String) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Config(format!("{what}: {e}"))
}

impl TcpAllReduce {
    /// Connect the ranks of `world`, each driving `local` replicas.
    pub fn connect(world: &World, local: usize) -> Result<TcpAllReduce> {
        let (addr, port) = world.master.clone().ok_or_else(|| {
            Error::Config("a multi-process run needs MASTER_ADDR and MASTER_PORT".into())
        })?;
        let port = port + 1;
        let mut peers = Vec::new();
        if world.rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", port)).map_err(net_err(format!(
                "rank 0 could not listen on port {port} (MASTER_PORT + 1); pick another MASTER_PORT"
            )))?;
            let mut by_rank: Vec<Option<TcpStream>> = (0..world.size).map(|_| None).collect();
            listener
                .set_nonblocking(true)
                .map_err(net_err("listen".into()))?;
            let start = Instant::now();
            while by_rank.iter().skip(1).any(Option::is_none) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).map_err(net_err("accept".into()))?;
                        let r = read_u32(&mut s)? as usize;
                        if r == 0 || r >= world.size || by_rank[r].is_some() {
                            return Err(Error::Config(format!(
                                "a process announced RANK={r}, which is out of range or taken: give each process its own RANK below WORLD_SIZE={}",
                                world.size
                            )));
                        }
                        by_rank[r] = Some(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if start.elapsed() > CONNECT_FOR {
                            let missing: Vec<usize> =
                                (1..world.size).filter(|&r| by_rank[r].is_none()).collect();
                            return Err(Error::Config(format!(
                                "rank 0 waited {} s on port {port} for ranks {missing:?}: start them with the same MASTER_ADDR and MASTER_PORT",
                                CONNECT_FOR.as_secs()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(net_err("accept".into())(e)),
                }
            }
            peers.extend(by_rank.into_iter().flatten());
        } else {
            let target = format!("{addr}:{port}");
            let start = Instant::now();
            let mut s = loop {
                let tried = target
                    .to_socket_addrs()
                    .map_err(net_err(format!("MASTER_ADDR {addr}")))?
                    .find_map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).ok());
                match tried {
                    Some(s) => break s,
                    None if start.elapsed() > CONNECT_FOR => {
                        return Err(Error::Config(format!(
                            "rank {} could not reach rank 0 at {target} in {} s: start rank 0, and check MASTER_ADDR and MASTER_PORT",
                            world.rank,
                            CONNECT_FOR.as_secs()
                        )))
                    }
                    None => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            s.write_all(&(world.rank as u32).to_le_bytes())
                .map_err(net_err(format!("rank {} to rank 0", world.rank)))?;
            peers.push(s);
        }
        for s in &peers {
            s.set_nodelay(true).map_err(net_err("socket".into()))?;
            s.set_read_timeout(Some(READ_FOR))
                .map_err(net_err("socket".into()))?;
        }
        Ok(TcpAllReduce {
            rank: world.rank,
            peers,
            local,
            ranks: world.size,
            sum: Vec::new(),
            part: Vec::new(),
            bytes: Vec::new(),
        })
    }

    /// The first local replica's index among all ranks' replicas.
    pub fn first_replica(&self) -> usize {
        self.rank * self.local
    }

    fn send(&mut self, peer: usize, v: &[f32]) -> Result<()> {
        self.bytes.clear();
        self.bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        let who = self.peer_name(peer);
        self.peers[peer]
            .write_all(&self.bytes)
            .map_err(net_err(format!("sending gradients to {who}")))
    }

    /// Reads `len` floats from `peer` into `self.part`.
    fn recv(&mut self, peer: usize, len: usize) -> Result<()> {
        self.bytes.resize(len * 4, 0);
        let who = self.peer_name(peer);
        self.peers[peer]
            .read_exact(&mut self.bytes)
            .map_err(net_err(format!(
                "receiving gradients from {who} (did it stop?)"
            )))?;
        self.part.clear();
        self.part.extend(
            self.bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }

    fn peer_name(&self, peer: usize) -> String {
        if self.rank == 0 {
            format!("rank {}", peer + 1)
        } else {
            "rank 0".into()
        }
    }
}

fn read_u32(s: &mut TcpStream) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)
        .map_err(net_err("a process connected but sent no rank".into()))?;
    Ok(u32::from_le_bytes(b))
}

impl<B: Backend> AllReduce<B> for TcpAllReduce {
    fn mean(&mut self, _part: usize, devs: &[&B], bufs: &mut [&mut B::Buf]) -> Result<()> {
        let Some(first) = bufs.first() else {
            return Ok(());
        };
        let len = devs[0].buf_len(first);
        if self.rank == 0 {
            self.sum.clear();
            self.sum.resize(len, 0.0);
            add_replicas(devs, bufs, &mut self.sum, &mut self.part)?;
            for peer in 0..self.peers.len() {
                for _ in 0..self.local {
                    self.recv(peer, len)?;
                    add(&mut self.sum, &self.part);
                }
            }
            scale(&mut self.sum, self.local * self.ranks);
            let mean = std::mem::take(&mut self.sum);
            for peer in 0..self.peers.len() {
                self.send(peer, &mean)?;
            }
            self.sum = mean;
        } else {
            let mut host = vec![0.0; len];
            for (dev, buf) in devs.iter().zip(bufs.iter()) {
                dev.download(buf, &mut host)?;
                self.send(0, &host)?;
            }
            self.recv(0, len)?;
            std::mem::swap(&mut self.sum, &mut self.part);
        }
        upload_all(devs, bufs, &self.sum)
    }

    fn first_replica(&self) -> usize {
        TcpAllReduce::first_replica(self)
    }
}
