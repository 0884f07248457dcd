//! The all-reduce across processes for CPU replicas: what NCCL is to GPUs,
//! over plain TCP, so a multi-process run (torchrun's variables, `world.rs`)
//! trains on CPU devices too and the multi-process path is tested without a
//! GPU.
//!
//! Rank 0 listens on MASTER_PORT + 1 at MASTER_ADDR only (127.0.0.1 for a
//! run on one machine), never on every interface, and every other rank
//! connects (retrying while rank 0 starts, and while its name does not
//! resolve yet). For each tensor, every rank
//! sends its replicas' buffers to rank 0, which sums all of them in global
//! replica order (rank by rank, then local order), scales by 1/k and sends
//! the mean back. That is the order `HostAllReduce` sums k replicas of one
//! process in, so W processes of k replicas compute bit for bit what one
//! process of W x k does. A star, not a ring: simple and exact, fine for
//! CPU-sized models.
//!
//! A connecting rank first sends a hello: MAGIC, its WORLD_SIZE, RANK and
//! replicas per process (rank 0 reads that many buffers from each peer, so
//! another count would shift every later buffer). A connection that does
//! not (a port scanner, another program, a process of another run), or
//! names a rank out of range or taken (by a connection still open: a rank
//! that died and is started again takes its place), another WORLD_SIZE or
//! another count of replicas, is refused: rank 0 logs a warning naming the peer's
//! address and why, answers the reason to a peer that spoke the protocol
//! (which then stops with an error saying it), closes the connection and
//! keeps waiting for the real ranks. So a stray connection can neither stop
//! nor join a run's start, a misconfigured process fails at once with the
//! reason, and if a rank never comes, rank 0's timeout error lists the
//! refused connections as well as the missing ranks. A signal (train's
//! stop flag) ends either wait, and a joined rank's wait for the start
//! byte below, at once with `Error::Stopped`. Each buffer
//! goes with its length, checked against the receiver's own: processes of
//! other builds or flags stop with an error naming the rank, rather than
//! reading each other's bytes out of step.
//!
//! Once every rank has joined, rank 0 sends each one a start byte, and a
//! rank waits for it (up to `World::connect_for`) before its first buffer:
//! a rank that joins early would otherwise wait on rank 0, still waiting
//! for the late ones, under the shorter timeout for a silent peer
//! (`World::peer_for`), and stop the run.
//!
//! Every transfer after that waits in slices (`SLICE`), looking at the stop
//! flag between them. A peer silent for `World::peer_for` stops the run; so
//! does one silent, once this process got a signal, for longer than any
//! wait a healthy step has needed (twice the longest since the first
//! collective, at least `STOP_GRACE`): a signal to a process whose peer
//! hangs is then acted on in seconds, through train's checkpoint of every
//! step it trained, and not after the peer timeout, when a scheduler's kill
//! or a second Ctrl-C would have lost them.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::allreduce::{add, add_replicas, scale, upload_all, AllReduce};
use super::world::World;
use crate::backend::Backend;
use crate::error::{Error, Result};

/// How long rank 0 waits for a new connection's hello (others queue meanwhile).
const HELLO_FOR: Duration = Duration::from_secs(10);

/// The socket timeout of every transfer: the stop flag is looked at
/// between slices, a blocked read or write wakes this often.
const SLICE: Duration = Duration::from_millis(100);

/// The least a signalled process waits on a silent peer before it stops
/// without it: the peer, signalled too, reaches the ranks' agreement to
/// stop within a step, well inside a scheduler's 30 s before its kill.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The hello's first bytes: the protocol, and its version (4: each buffer
/// sent with its length, the start byte once all have joined).
const MAGIC: [u8; 8] = *b"alexTCP4";
const HELLO_LEN: usize = 20;

/// Rank 0's one-byte answer to a hello.
const ACCEPTED: u8 = 0;
const OUT_OF_RANGE: u8 = 1;
const TAKEN: u8 = 2;
const OTHER_WORLD: u8 = 3;
const OTHER_REPLICAS: u8 = 4;
/// Rank 0's byte to every rank once all have joined.
const ALL_JOINED: u8 = 5;

/// This process's end of the all-reduce.
pub struct TcpAllReduce {
    rank: usize,
    /// Rank 0: a stream to each rank 1..W, in rank order. Others: to rank 0.
    peers: Vec<TcpStream>,
    /// Local replicas per process (the same on every rank).
    local: usize,
    ranks: usize,
    /// How long a peer may take to send or take data (`World::peer_for`):
    /// a peer stopped or hung must not hang the run for ever.
    peer_for: Duration,
    /// A rank other than 0, until rank 0's start byte came: how long to
    /// wait for it (`World::connect_for`).
    start_for: Option<Duration>,
    /// Train's stop flag: a signal ends the wait for the start byte, and
    /// a transfer with a peer silent for `grace`.
    stop: Option<Arc<AtomicBool>>,
    /// The longest silence a transfer outlasted since the first collective
    /// ended (None before: that one also waits for the ranks' set-up).
    slowest: Option<Duration>,
    sum: Vec<f32>,
    part: Vec<f32>,
    bytes: Vec<u8>,
}

fn net_err(what: String) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Config(format!("{what}: {e}"))
}

/// `net_err` for the gradients' traffic: a peer silent for `waited` is
/// named as such (the socket reports a timeout as "would block").
fn peer_err(what: String, waited: Duration) -> impl Fn(std::io::Error) -> Error {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    move |e| {
        let why = match e.kind() {
            WouldBlock | TimedOut => format!(
                "nothing moved for {} s; that process stopped, hung or lost the network: see its log (ALEXNET_PEER_TIMEOUT sets the wait)",
                waited.as_secs()
            ),
            _ => format!("{e} (did that process stop? see its log)"),
        };
        Error::Peer(format!("{what}: {why}"))
    }
}

/// Why a transfer ended before its last byte.
enum Halt {
    /// The socket failed, or the peer was silent for the peer timeout.
    Io(std::io::Error),
    /// A signal came while the peer had been silent this long.
    Stopped(Duration),
}

type Halted<T> = std::result::Result<T, Halt>;

impl Halt {
    /// `Error::Peer` naming the transfer `what`, which waited `peer_for`.
    fn error(self, what: &str, peer_for: Duration) -> Error {
        match self {
            Halt::Io(e) => peer_err(what.to_string(), peer_for)(e),
            Halt::Stopped(silent) => Error::Peer(format!(
                "{what}: stopped at a signal after nothing moved for {} s, longer than any step of the run waited; that process hung or is still busy: see its log",
                silent.as_secs()
            )),
        }
    }
}

/// How long a transfer waits on a silent peer: `peer_for`, or `grace`
/// once a signal came.
struct Patience<'a> {
    peer_for: Duration,
    stop: Option<&'a Arc<AtomicBool>>,
    grace: Duration,
}

impl<'a> Patience<'a> {
    /// The grace after a signal: twice the longest silence a transfer
    /// outlasted (`slowest`), and at least `STOP_GRACE`.
    fn of(
        peer_for: Duration,
        stop: Option<&'a Arc<AtomicBool>>,
        slowest: Option<Duration>,
    ) -> Patience<'a> {
        let grace = STOP_GRACE.max(2 * slowest.unwrap_or_default());
        Patience {
            peer_for,
            stop,
            grace,
        }
    }

    /// Moves `len` bytes, `io(done)` moving some after the first `done`
    /// (or timing out after a `SLICE`); the longest silence between moves.
    fn transfer(
        &self,
        len: usize,
        mut io: impl FnMut(usize) -> std::io::Result<usize>,
    ) -> Halted<Duration> {
        use std::io::ErrorKind::{Interrupted, TimedOut, UnexpectedEof, WouldBlock};
        let (mut done, mut since, mut slowest) = (0, Instant::now(), Duration::ZERO);
        while done < len {
            match io(done) {
                Ok(0) => {
                    let closed = std::io::Error::new(UnexpectedEof, "the connection closed");
                    return Err(Halt::Io(closed));
                }
                Ok(n) => {
                    done += n;
                    slowest = slowest.max(since.elapsed());
                    since = Instant::now();
                }
                Err(e) if matches!(e.kind(), WouldBlock | TimedOut | Interrupted) => {
                    let silent = since.elapsed();
                    if silent >= self.peer_for {
                        return Err(Halt::Io(TimedOut.into()));
                    }
                    if asked_to_stop(self.stop) && silent >= self.grace {
                        return Err(Halt::Stopped(silent));
                    }
                }
                Err(e) => return Err(Halt::Io(e)),
            }
        }
        Ok(slowest)
    }
}

/// MASTER_ADDR and the all-reduce's port, MASTER_PORT + 1.
fn master(world: &World) -> Result<(String, u16)> {
    let (addr, port) = world.master.clone().ok_or_else(|| {
        Error::Config("a multi-process run needs MASTER_ADDR and MASTER_PORT".into())
    })?;
    let port = port.checked_add(1).ok_or_else(|| {
        Error::Config(format!(
            "MASTER_PORT={port}: the CPU all-reduce needs MASTER_PORT + 1 too"
        ))
    })?;
    Ok((addr, port))
}

/// The socket addresses `addr` (a name or an IP, IPv6 with or without
/// brackets) and `port` stand for, none of them the unspecified one.
fn resolve(addr: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let all = lookup(addr, port)?;
    refuse_unspecified(addr, &all)?;
    Ok(all)
}

/// [`resolve`] without the check of what the name resolved to.
fn lookup(addr: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let host = addr.trim_start_matches('[').trim_end_matches(']');
    let all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(net_err(format!("MASTER_ADDR={addr}")))?
        .collect();
    if all.is_empty() {
        return Err(Error::Config(format!(
            "MASTER_ADDR={addr}: the name resolves to no address"
        )));
    }
    Ok(all)
}

/// A name such as `0` resolves to 0.0.0.0, which World refuses when
/// written out: rank 0 would listen on every interface.
fn refuse_unspecified(addr: &str, all: &[SocketAddr]) -> Result<()> {
    match all.iter().find(|a| a.ip().is_unspecified()) {
        Some(any) => Err(Error::Config(format!(
            "MASTER_ADDR={addr} resolves to {}, the address of no machine: set it to rank 0's address (127.0.0.1 for processes on one machine)",
            any.ip()
        ))),
        None => Ok(()),
    }
}

/// A listener at `addr` (MASTER_ADDR) and `port` and nowhere else; port 0
/// takes any free port. The first of `addr`'s addresses that binds.
pub fn bind_at(addr: &str, port: u16) -> Result<TcpListener> {
    let mut failed = Vec::new();
    let mut in_use = false;
    for a in resolve(addr, port)? {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => {
                in_use |= e.kind() == std::io::ErrorKind::AddrInUse;
                failed.push(format!("{a}: {e}"));
            }
        }
    }
    // The likeliest holder is this run's own rank 0, started twice.
    let twice = match in_use {
        true => "; if it is this run's rank 0, two processes were given RANK=0: check each one's RANK (torchrun: --node-rank)",
        false => "",
    };
    Err(Error::Config(format!(
        "rank 0 could not listen at MASTER_ADDR={addr}, port {port} (MASTER_PORT + 1): {}; MASTER_ADDR must be an address of rank 0's machine (127.0.0.1 when every rank runs on it), and the port free (pick another MASTER_PORT){twice}",
        failed.join(", ")
    )))
}

/// Rank 0's listener: the socket the launcher handed over
/// (`World::listen_fd`), else one bound at MASTER_ADDR:MASTER_PORT + 1.
/// Either way it listens there only.
pub fn listen(world: &World) -> Result<TcpListener> {
    let (addr, port) = master(world)?;
    match world.listen_fd {
        Some(fd) => inherited(fd, &addr, port),
        None => bind_at(&addr, port),
    }
}

/// Takes the inherited listening socket `fd` and checks it is bound at
/// `addr:port`, so a handed-over socket cannot listen more widely.
#[cfg(unix)]
fn inherited(fd: i32, addr: &str, port: u16) -> Result<TcpListener> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileTypeExt;
    let what = format!("ALEXNET_LISTEN_FD={fd}");
    // Taking a descriptor that is not open would be undefined; where /proc
    // can tell, refuse anything but an open socket first.
    let proc = std::path::Path::new("/proc/self/fd");
    if proc.is_dir() {
        let is_socket =
            std::fs::metadata(proc.join(fd.to_string())).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            return Err(Error::Config(format!(
                "{what}: not an open socket in this process; hand rank 0 the listening socket under that number, or unset the variable"
            )));
        }
    }
    // SAFETY: the launcher handed this descriptor to the process for this
    // use (ALEXNET_LISTEN_FD), it is open (checked above where possible),
    // and nothing else in the process uses it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let at = listener
        .local_addr()
        .map_err(net_err(format!("{what}: not a TCP socket")))?;
    if !resolve(addr, port)?.contains(&at) {
        return Err(Error::Config(format!(
            "{what} is bound at {at}, not at MASTER_ADDR={addr} port {port} (MASTER_PORT + 1): bind it there"
        )));
    }
    // A launcher that reserved the port may have bound it only: listen.
    // On one that listens already this sets the backlog again, so ask for
    // Linux's largest (net.core.somaxconn caps it): the ranks may all
    // connect at once. A datagram socket cannot listen, and would
    // otherwise fail every accept.
    rustix::net::listen(&listener, 4096).map_err(|e| {
        Error::Config(format!(
            "{what}: cannot listen on it ({e}); hand rank 0 a TCP stream socket bound at {at}"
        ))
    })?;
    Ok(listener)
}

#[cfg(not(unix))]
fn inherited(fd: i32, _addr: &str, _port: u16) -> Result<TcpListener> {
    Err(Error::Config(format!(
        "ALEXNET_LISTEN_FD={fd}: handing over a socket works on Unix only; unset it"
    )))
}

/// Whether a signal has set `stop` (train's flag; None where no one listens).
fn asked_to_stop(stop: Option<&Arc<AtomicBool>>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::Relaxed))
}

/// One byte from rank 0 (its answer to a hello, its start byte), read in
/// slices (the socket's timeout) with a look at the stop flag between
/// them: `None` at a signal, `TimedOut` after `wait`, `UnexpectedEof` when
/// rank 0 closed the connection.
fn read_byte(
    s: &mut TcpStream,
    stop: Option<&Arc<AtomicBool>>,
    wait: Duration,
) -> std::io::Result<Option<u8>> {
    use std::io::ErrorKind::{Interrupted, TimedOut, UnexpectedEof, WouldBlock};
    s.set_read_timeout(Some(SLICE))?;
    let start = Instant::now();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => return Ok(Some(b[0])),
            Ok(_) => return Err(UnexpectedEof.into()),
            Err(e) if matches!(e.kind(), WouldBlock | TimedOut | Interrupted) => {}
            Err(e) => return Err(e),
        }
        if asked_to_stop(stop) {
            return Ok(None);
        }
        if start.elapsed() > wait {
            return Err(TimedOut.into());
        }
    }
}

/// The error that ends a wait for other ranks when a signal came first.
fn stopped(waiting_for: String) -> Error {
    Error::Stopped(format!(
        "stopped at a signal while {waiting_for}: nothing was trained"
    ))
}

impl TcpAllReduce {
    /// Connect the ranks of `world`, each driving `local` replicas; a set
    /// `stop` ends the wait for the others.
    pub fn connect(
        world: &World,
        local: usize,
        stop: Option<&Arc<AtomicBool>>,
    ) -> Result<TcpAllReduce> {
        if world.rank == 0 {
            TcpAllReduce::accept(listen(world)?, world, local, stop)
        } else {
            TcpAllReduce::join(world, local, stop)
        }
    }

    /// Rank 0: wait on `listener` until every rank 1..W has joined,
    /// refusing (with a warning naming the peer) every connection that is
    /// not a free rank of this run, until `stop` is set.
    pub fn accept(
        listener: TcpListener,
        world: &World,
        local: usize,
        stop: Option<&Arc<AtomicBool>>,
    ) -> Result<TcpAllReduce> {
        let at = listener.local_addr().map_err(net_err("listen".into()))?;
        if let Some(note) = world
            .master
            .as_ref()
            .and_then(|(a, _)| loopback_name(a, at))
        {
            tracing::warn!("{note}");
        }
        listener
            .set_nonblocking(true)
            .map_err(net_err("listen".into()))?;
        let mut by_rank: Vec<Option<TcpStream>> = (0..world.size).map(|_| None).collect();
        let mut refused: Vec<String> = Vec::new();
        let start = Instant::now();
        let deadline = start + world.connect_for;
        // A wait for ranks still starting can be long: say what it is.
        tracing::info!(
            "rank 0: waiting at {at} for ranks 1 to {} to join (up to {} s)",
            world.size - 1,
            world.connect_for.as_secs()
        );
        while by_rank.iter().skip(1).any(Option::is_none) {
            // Checked every pass, not only when no connection waits: a
            // stream of strangers' connections must not hold rank 0 past
            // its deadline or a signal.
            let missing =
                || -> Vec<usize> { (1..world.size).filter(|&r| by_rank[r].is_none()).collect() };
            if asked_to_stop(stop) {
                return Err(stopped(format!(
                    "rank 0 waited at {at} for ranks {:?}",
                    missing()
                )));
            }
            if start.elapsed() > world.connect_for {
                let refused = if refused.is_empty() {
                    String::new()
                } else {
                    format!("; refused: {}", refused.join(", "))
                };
                return Err(Error::Config(format!(
                    "rank 0 waited {} s at {at} for ranks {:?}{refused}: start them with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE",
                    world.connect_for.as_secs(),
                    missing()
                )));
            }
            match listener.accept() {
                Ok((s, peer)) => match hello(s, (world, local), &mut by_rank, (stop, deadline)) {
                    Ok((r, s)) => {
                        tracing::debug!("rank {r} joined from {peer}");
                        by_rank[r] = Some(s);
                    }
                    Err(why) => {
                        tracing::warn!("refused a connection from {peer}: {why}");
                        refused.push(format!("{peer} ({why})"));
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if one_connections(&e) => {
                    tracing::warn!("a connection failed before rank 0 took it: {e}");
                    refused.push(format!("one that failed as it was taken ({e})"));
                }
                Err(e) => return Err(net_err(format!("accepting at {at}"))(e)),
            }
        }
        let peers: Vec<TcpStream> = by_rank.into_iter().flatten().collect();
        let mut all = TcpAllReduce::new(world, local, peers, stop.cloned())?;
        for (i, s) in all.peers.iter_mut().enumerate() {
            let failed = peer_err(format!("telling rank {} to start", i + 1), all.peer_for);
            s.write_all(&[ALL_JOINED]).map_err(failed)?;
        }
        tracing::info!("all {} processes joined", world.size);
        Ok(all)
    }

    /// A rank other than 0: connect to rank 0 and be accepted as
    /// `world.rank`, trying until `stop` is set.
    pub fn join(
        world: &World,
        local: usize,
        stop: Option<&Arc<AtomicBool>>,
    ) -> Result<TcpAllReduce> {
        let (addr, port) = master(world)?;
        let target = super::world::host_port(&addr, port.into());
        let rank = world.rank;
        let start = Instant::now();
        tracing::info!(
            "rank {rank}: joining rank 0 at {target} (up to {} s)",
            world.connect_for.as_secs()
        );
        // A name that does not resolve yet is retried too: a scheduler's
        // DNS record for rank 0's node or pod may appear only once it runs.
        let mut last = String::new();
        let mut s = loop {
            // The last failure is kept for the final error: refused (no
            // rank 0 yet, or another port), no route, or silence differ.
            // A name not found yet is tried again; one found for no
            // machine will not change.
            let tried = match lookup(&addr, port) {
                Ok(all) => {
                    refuse_unspecified(&addr, &all)?;
                    all.into_iter().find_map(|a| {
                        match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                last = format!(" (last try: {e})");
                                None
                            }
                        }
                    })
                }
                Err(e) => {
                    last = format!(" ({e})");
                    None
                }
            };
            match tried {
                Some(s) => break s,
                None if asked_to_stop(stop) => {
                    return Err(stopped(format!(
                        "rank {rank} tried to reach rank 0 at {target}"
                    )))
                }
                None if start.elapsed() > world.connect_for => {
                    return Err(Error::Config(format!(
                        "rank {rank} could not reach rank 0 at {target} in {} s{last}: start rank 0, and check MASTER_ADDR and MASTER_PORT",
                        world.connect_for.as_secs()
                    )));
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let mut greeting = Vec::with_capacity(HELLO_LEN);
        greeting.extend_from_slice(&MAGIC);
        greeting.extend_from_slice(&(world.size as u32).to_le_bytes());
        greeting.extend_from_slice(&(rank as u32).to_le_bytes());
        greeting.extend_from_slice(&(local as u32).to_le_bytes());
        s.write_all(&greeting)
            .map_err(net_err(format!("rank {rank} to rank 0 at {target}")))?;
        let answer = read_byte(&mut s, stop, world.connect_for).map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::TimedOut => format!(
                    "did not answer this process's hello in {} s; rank 0 may still be starting (it answers once it waits for the ranks; ALEXNET_CONNECT_TIMEOUT sets the wait), or something other than rank 0 of this run listens there",
                    world.connect_for.as_secs()
                ),
                _ => format!("closed the connection without accepting it ({e}); is something other than rank 0 of this run listening there?"),
            };
            Error::Config(format!(
                "rank {rank}: {target} {what}; check MASTER_ADDR and MASTER_PORT"
            ))
        })?;
        let Some(answer) = answer else {
            return Err(stopped(format!(
                "rank {rank} waited for rank 0 at {target} to answer its hello"
            )));
        };
        let why = match answer {
            ACCEPTED => return TcpAllReduce::new(world, local, vec![s], stop.cloned()),
            OUT_OF_RANGE => format!(
                "RANK={rank} is out of range for WORLD_SIZE={}",
                world.size
            ),
            TAKEN => format!(
                "another process already joined as RANK={rank}; give each process its own RANK"
            ),
            OTHER_WORLD => format!(
                "rank 0 runs another WORLD_SIZE than this process's {}; start every process with the same one",
                world.size
            ),
            OTHER_REPLICAS => format!(
                "rank 0 drives another number of replicas per process than this process's {local}; start every process with the same --parallel and --replicas"
            ),
            other => format!("answer {other} is not rank 0's; check MASTER_ADDR and MASTER_PORT"),
        };
        Err(Error::Config(format!(
            "rank 0 at {target} refused this process: {why}"
        )))
    }

    fn new(
        world: &World,
        local: usize,
        peers: Vec<TcpStream>,
        stop: Option<Arc<AtomicBool>>,
    ) -> Result<TcpAllReduce> {
        for s in &peers {
            s.set_nodelay(true).map_err(net_err("socket".into()))?;
            s.set_read_timeout(Some(SLICE))
                .and_then(|()| s.set_write_timeout(Some(SLICE)))
                .map_err(net_err("socket".into()))?;
        }
        Ok(TcpAllReduce {
            rank: world.rank,
            peers,
            local,
            ranks: world.size,
            peer_for: world.peer_for,
            start_for: (world.rank != 0).then_some(world.connect_for),
            stop,
            slowest: None,
            sum: Vec::new(),
            part: Vec::new(),
            bytes: Vec::new(),
        })
    }

    /// A rank other than 0, before its first buffer: waits for rank 0's
    /// start byte, sent once every rank has joined, until a signal.
    fn wait_for_start(&mut self) -> Result<()> {
        let Some(wait) = self.start_for.take() else {
            return Ok(());
        };
        let rank = self.rank;
        let failed = |why: String| {
            Error::Config(format!(
                "rank {rank}, waiting for the other ranks to join: {why}; rank 0's log names the ranks it waited for"
            ))
        };
        let stop = self.stop.as_ref();
        let stopped_here = || stopped(format!("rank {rank} waited for the other ranks"));
        let byte = match read_byte(&mut self.peers[0], stop, wait) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(stopped_here()),
            Err(e) => return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof if asked_to_stop(stop) => stopped_here(),
                std::io::ErrorKind::UnexpectedEof => failed("rank 0 closed the connection before every rank had joined: it stopped, or gave up waiting for a rank".into()),
                std::io::ErrorKind::TimedOut => failed(format!(
                    "not every rank joined in {} s (ALEXNET_CONNECT_TIMEOUT sets the wait)",
                    wait.as_secs()
                )),
                _ => failed(e.to_string()),
            }),
        };
        if byte != ALL_JOINED {
            return Err(Error::Config(format!(
                "rank {rank}: rank 0 sent {byte} where its start byte belongs; run the same alexnet-cuda build in every process"
            )));
        }
        Ok(())
    }

    /// The first local replica's index among all ranks' replicas.
    pub fn first_replica(&self) -> usize {
        self.rank * self.local
    }

    /// Sends `v` after its length, which the receiver checks against its
    /// own buffer's: processes of other builds or flags would otherwise
    /// read each other's bytes out of step, averaging garbage or waiting.
    fn send(&mut self, peer: usize, v: &[f32]) -> Result<()> {
        self.bytes.clear();
        self.bytes.extend((v.len() as u64).to_le_bytes());
        self.bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        let what = format!("sending gradients to {}", self.peer_name(peer));
        let (s, bytes) = (&mut self.peers[peer], &self.bytes);
        let wait = Patience::of(self.peer_for, self.stop.as_ref(), self.slowest);
        let slowest = wait.transfer(bytes.len(), |done| s.write(&bytes[done..]));
        self.outlasted(&what, slowest)
    }

    /// Reads `len` floats from `peer` into `self.part`; an error naming the
    /// peer when it sends another length.
    fn recv(&mut self, peer: usize, len: usize) -> Result<()> {
        let who = self.peer_name(peer);
        let what = self.receiving_from(peer);
        let mut head = [0u8; 8];
        self.read(peer, &what, &mut head)?;
        let sent = u64::from_le_bytes(head);
        if sent != len as u64 {
            return Err(Error::Config(format!(
                "{who} sent a buffer of {sent} values where this process has {len}: the processes run different builds or network flags; start every process with the same alexnet-cuda and the same --config, --parallel and layer flags"
            )));
        }
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.resize(len * 4, 0);
        let read = self.read(peer, &what, &mut bytes);
        self.bytes = bytes;
        read?;
        self.part.clear();
        self.part.extend(
            self.bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }

    /// Fills `buf` from `peer` (`Patience`); `what` names the transfer.
    fn read(&mut self, peer: usize, what: &str, buf: &mut [u8]) -> Result<()> {
        let s = &mut self.peers[peer];
        let wait = Patience::of(self.peer_for, self.stop.as_ref(), self.slowest);
        let slowest = wait.transfer(buf.len(), |done| s.read(&mut buf[done..]));
        self.outlasted(what, slowest)
    }

    /// A transfer's end: its longest silence kept once the first
    /// collective is over, its failure as `Error::Peer` naming `what`.
    fn outlasted(&mut self, what: &str, got: Halted<Duration>) -> Result<()> {
        let silent = got.map_err(|h| h.error(what, self.peer_for))?;
        if let Some(s) = &mut self.slowest {
            *s = (*s).max(silent);
        }
        Ok(())
    }

    /// What a receive from `peer` waits for, for its error. The first
    /// collective waits for every process to load its data and build its
    /// network (the processes agreeing on the run): rank 0 for each rank,
    /// the others for rank 0, which answers once every rank has.
    fn receiving_from(&self, peer: usize) -> String {
        let who = self.peer_name(peer);
        match (self.slowest, self.rank) {
            (Some(_), _) => format!("receiving gradients from {who}"),
            (None, 0) => format!(
                "waiting for {who} to load its data and build its network (the processes' first exchange)"
            ),
            (None, _) => "waiting for rank 0, which waits for every rank to load its data and build its network (the processes' first exchange)".into(),
        }
    }

    fn peer_name(&self, peer: usize) -> String {
        if self.rank == 0 {
            format!("rank {}", peer + 1)
        } else {
            "rank 0".into()
        }
    }
}

/// A warning when MASTER_ADDR is a host name that resolved to a loopback
/// address (Debian and Ubuntu map the machine's own name to 127.0.1.1 in
/// /etc/hosts): rank 0 then listens where no other machine can reach it,
/// and ranks elsewhere only time out. Loopback given as such (127.0.0.1,
/// ::1, localhost) is a run on one machine, and says nothing.
fn loopback_name(addr: &str, bound: SocketAddr) -> Option<String> {
    let host = addr.trim_start_matches('[').trim_end_matches(']');
    let literal =
        host.parse::<std::net::IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost");
    (bound.ip().is_loopback() && !literal).then(|| {
        format!(
            "MASTER_ADDR={addr} resolves to {}, a loopback address: only processes on this machine can reach rank 0; for ranks on other machines, set MASTER_ADDR to an IP address of this machine",
            bound.ip()
        )
    })
}

/// Whether `accept` failed for that one connection, not for the listener:
/// a peer reset before it was taken (a port scanner does), or the network
/// errors Linux's accept(2) says to treat like EAGAIN. Rank 0 goes on
/// waiting, as for a stranger.
fn one_connections(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted
            | ConnectionReset
            | Interrupted
            | NetworkDown
            | NetworkUnreachable
            | HostUnreachable
    ) || (cfg!(target_os = "linux")
        // EPROTO, ENONET, ENOPROTOOPT, EOPNOTSUPP, EHOSTDOWN: Linux's numbers.
        && matches!(e.raw_os_error(), Some(71 | 64 | 92 | 95 | 112)))
}

/// Whether a joined rank's connection is still open: a rank that died
/// while rank 0 waits for the others, and is started again, takes its place
/// rather than being refused as a second process of its RANK. Its peer
/// closed it when a read would return end of file or an error; a live
/// rank is silent (would block) or already sending its gradients.
fn still_open(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let open = match s.peek(&mut [0u8; 1]) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    open && s.set_nonblocking(false).is_ok()
}

/// A new connection's hello, read in slices: a peer that connects and says
/// nothing holds rank 0 until `until` (HELLO_FOR, or its own deadline if
/// sooner), and a signal not past the next slice.
fn read_hello(
    s: &mut TcpStream,
    stop: Option<&Arc<AtomicBool>>,
    until: Instant,
) -> std::result::Result<[u8; HELLO_LEN], String> {
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(SLICE)).map_err(|e| e.to_string())?;
    let mut b = [0u8; HELLO_LEN];
    let mut got = 0;
    while got < HELLO_LEN {
        if asked_to_stop(stop) {
            return Err("rank 0 was asked to stop before its hello came".into());
        }
        if Instant::now() > until {
            return Err(format!(
                "no full hello: {got} of {HELLO_LEN} bytes, then silence"
            ));
        }
        match s.read(&mut b[got..]) {
            Ok(0) => {
                return Err(format!(
                    "no full hello: it closed after {got} of {HELLO_LEN} bytes"
                ))
            }
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("no full hello ({e})")),
        }
    }
    Ok(b)
}

/// Reads a new connection's hello and answers it. The rank and stream when
/// it names a free rank of this run, else why not (answered to a peer that
/// spoke the protocol; the stream is then dropped, which closes it).
fn hello(
    mut s: TcpStream,
    (world, local): (&World, usize),
    by_rank: &mut [Option<TcpStream>],
    (stop, deadline): (Option<&Arc<AtomicBool>>, Instant),
) -> std::result::Result<(usize, TcpStream), String> {
    let b = read_hello(&mut s, stop, deadline.min(Instant::now() + HELLO_FOR))?;
    if b[..7] == MAGIC[..7] && b[7] != MAGIC[7] {
        return Err(format!(
            "it speaks version {} of the ranks' protocol, this build {}: run the same alexnet-cuda build in every process",
            b[7] as char, MAGIC[7] as char
        ));
    }
    if b[..8] != MAGIC {
        return Err("its hello is not an alexnet-cuda rank's".into());
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
    let (size, rank, replicas) = (word(8), word(12), word(16));
    let (answer, why) = if size != world.size {
        (
            OTHER_WORLD,
            format!("it has WORLD_SIZE={size}, this run {}", world.size),
        )
    } else if replicas != local {
        (
            OTHER_REPLICAS,
            format!("it drives {replicas} replicas, each process of this run {local}"),
        )
    } else if rank == 0 || rank >= size {
        (
            OUT_OF_RANGE,
            format!("it announced RANK={rank}, outside 1..{}", size - 1),
        )
    } else if by_rank[rank].as_ref().is_some_and(still_open) {
        (
            TAKEN,
            format!("it announced RANK={rank}, which another process already has"),
        )
    } else {
        (ACCEPTED, String::new())
    };
    let sent = s.write_all(&[answer]);
    match (answer, sent) {
        (ACCEPTED, Ok(())) => {
            if by_rank[rank].take().is_some() {
                tracing::warn!("RANK={rank} joined again: its earlier connection had closed");
            }
            Ok((rank, s))
        }
        (ACCEPTED, Err(e)) => Err(format!("RANK={rank} left before it was accepted ({e})")),
        _ => Err(why),
    }
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
            self.wait_for_start()?;
            // The last step's mean, reused: a new buffer each step was
            // fc6's 150 MB allocated and faulted in again.
            let mut host = std::mem::take(&mut self.sum);
            host.resize(len, 0.0);
            for (dev, buf) in devs.iter().zip(bufs.iter()) {
                dev.download(buf, &mut host)?;
                self.send(0, &host)?;
            }
            self.recv(0, len)?;
            // The mean received becomes the sum; the buffer sent, the next
            // one received into.
            self.sum = std::mem::replace(&mut self.part, host);
        }
        self.slowest.get_or_insert(Duration::ZERO);
        upload_all(devs, bufs, &self.sum)
    }

    fn first_replica(&self) -> usize {
        TcpAllReduce::first_replica(self)
    }

    /// The sum, the buffer received and its bytes, and on ranks above 0
    /// their own buffer as sent: four on every rank (rank 0 holds three),
    /// so the ranks' plans differ by rank 0's checkpoint alone.
    fn host_floats(&self, len: usize) -> usize {
        4 * len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_for_the_unspecified_address_is_refused() {
        // glibc reads `0` as the IPv4 number 0: 0.0.0.0, every interface.
        let e = bind_at("0", 0).unwrap_err().to_string();
        assert!(e.contains("MASTER_ADDR=0 resolves to 0.0.0.0"), "{e}");
        assert!(bind_at("127.0.0.1", 0).is_ok());
    }

    #[test]
    fn a_host_name_that_resolves_to_loopback_is_warned_of() {
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 29501);
        let note = loopback_name("node1", at("127.0.1.1")).unwrap();
        assert!(
            note.contains("MASTER_ADDR=node1 resolves to 127.0.1.1"),
            "{note}"
        );
        assert_eq!(loopback_name("node1", at("10.0.0.5")), None);
        for given in ["127.0.0.1", "localhost", "[::1]", "::1"] {
            assert_eq!(loopback_name(given, at("127.0.0.1")), None, "{given}");
        }
    }

    #[test]
    fn a_connection_that_fails_as_it_is_taken_does_not_end_the_wait() {
        use std::io::{Error as IoError, ErrorKind};
        for kind in [ErrorKind::ConnectionAborted, ErrorKind::ConnectionReset] {
            assert!(one_connections(&IoError::from(kind)), "{kind:?}");
        }
        // The listener's own faults (a bad descriptor, no descriptors
        // left) are not one connection's: they end the wait with the error.
        for errno in [9, 24] {
            assert!(
                !one_connections(&IoError::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        if cfg!(target_os = "linux") {
            assert!(one_connections(&IoError::from_raw_os_error(71)), "EPROTO");
        }
    }

    #[test]
    fn a_silent_peer_is_named_as_silent() {
        // A real socket whose peer sends nothing: the timeout's error, as
        // this OS reports it, is named as silence.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _peer = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let err = s.read_exact(&mut [0u8; 4]).unwrap_err();
        let waited = Duration::from_secs(600);
        let e = peer_err("receiving gradients from rank 2".into(), waited)(err).to_string();
        assert!(e.contains("rank 2: nothing moved for 600 s"), "{e}");
        let e = peer_err("sending gradients to rank 0".into(), waited)(
            std::io::ErrorKind::BrokenPipe.into(),
        );
        assert!(e.to_string().contains("did that process stop?"), "{e}");
    }
}
