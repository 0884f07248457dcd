//! The CPU all-reduce's rendezvous across processes (src/dist/tcp.rs),
//! here with the ranks as threads: rank 0 listens at MASTER_ADDR only (an
//! inherited socket too), refuses every connection that is not a free rank
//! of the run (or drives another number of replicas) with a warning naming
//! the peer, tells a refused rank why, and still meets the real ranks,
//! whose all-reduce then averages all three (and every replica of two
//! processes of two); an early rank waits for the late ones; a signal ends
//! each wait.
//! Each test binds its listener itself and passes it on (port 0: any free
//! port), so no port is released and reused; a port nothing may listen at
//! is taken below the range port 0 draws from.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alexnet_cuda::backend::cpu::CpuBackend;
use alexnet_cuda::backend::Backend;
use alexnet_cuda::dist::tcp::{bind_at, listen, TcpAllReduce};
use alexnet_cuda::dist::world::World;
use alexnet_cuda::dist::AllReduce;
use alexnet_cuda::Error;

/// Rank `rank` of `size`, whose MASTER_PORT + 1 is `port`.
fn world(rank: usize, size: usize, port: u16) -> World {
    World {
        rank,
        size,
        master: Some(("127.0.0.1".into(), port - 1)),
        ..World::single()
    }
}

/// A port on 127.0.0.1 that nothing listens at, below the range the system
/// hands out for port 0 (`ip_local_port_range`), so the listeners the
/// tests beside this one bind cannot take it meanwhile.
fn port_nobody_listens_at() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32768);
    (low.saturating_sub(3000)..low)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below the ephemeral range")
}

fn error_of(r: alexnet_cuda::Result<TcpAllReduce>) -> String {
    match r {
        Ok(_) => panic!("joined, but should have been refused"),
        Err(e) => e.to_string(),
    }
}

/// Rank `rank` of 3 whose ranks wait only 1 s for each other.
fn brief(rank: usize, port: u16) -> World {
    World {
        connect_for: Duration::from_secs(1),
        ..world(rank, 3, port)
    }
}

type Rank0 = std::thread::JoinHandle<alexnet_cuda::Result<TcpAllReduce>>;

/// Rank 0 accepting in a thread, at a port of its own, each rank's world
/// `world_of(rank, port)`, `local` replicas per process, stopped by `stop`:
/// the port, and rank 0's thread.
fn rank0_accepting(
    world_of: fn(usize, u16) -> World,
    local: usize,
    stop: Option<Arc<AtomicBool>>,
) -> (u16, Rank0) {
    let listener = bind_at("127.0.0.1", 0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let rank0 = std::thread::spawn(move || {
        TcpAllReduce::accept(listener, &world_of(0, port), local, stop.as_ref())
    });
    (port, rank0)
}

/// Log lines, for a subscriber of one thread.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn rank_0_listens_at_master_addr_and_nowhere_else() {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v4 = bind_at("127.0.0.1", 0).expect("listen on loopback");
    assert_eq!(v4.local_addr().unwrap().ip(), loopback);
    // A name: whichever loopback address it resolves to, never 0.0.0.0.
    let l = bind_at("localhost", 0).expect("listen on localhost");
    assert!(l.local_addr().unwrap().ip().is_loopback(), "{l:?}");
    // An address that is not this machine's (TEST-NET-1, RFC 5737): an
    // error naming MASTER_ADDR, not a listener somewhere else.
    let err = bind_at("192.0.2.1", 0).unwrap_err().to_string();
    assert!(
        err.contains("MASTER_ADDR=192.0.2.1"),
        "the error names MASTER_ADDR: {err}"
    );
    assert!(!err.contains("RANK=0"), "{err}");
    // The port taken, likeliest by this run's rank 0 started twice: said.
    let taken = v4.local_addr().unwrap().port();
    let err = bind_at("127.0.0.1", taken).unwrap_err().to_string();
    assert!(
        err.contains("pick another MASTER_PORT") && err.contains("two processes were given RANK=0"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_handed_over_socket_must_listen_at_master_addr() {
    use std::os::fd::IntoRawFd;
    // Bound at MASTER_ADDR:MASTER_PORT + 1: taken as is.
    let ours = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = ours.local_addr().unwrap();
    let mut w = world(0, 2, at.port());
    w.listen_fd = Some(ours.into_raw_fd());
    let l = listen(&w).expect("the handed-over listener");
    assert_eq!(l.local_addr().unwrap(), at);
    // On every interface: refused, though the port is right.
    let wide = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = wide.local_addr().unwrap().port();
    let mut w = world(0, 2, port);
    w.listen_fd = Some(wide.into_raw_fd());
    let err = listen(&w).unwrap_err().to_string();
    assert!(
        err.contains("ALEXNET_LISTEN_FD") && err.contains("0.0.0.0") && err.contains("127.0.0.1"),
        "{err}"
    );
    // Bound but not listening (a launcher that only reserved the port):
    // rank 0 listens on it, and a peer connects.
    use rustix::net::{bind, socket, AddressFamily, SocketType};
    let bound = |kind| {
        let s = socket(AddressFamily::INET, kind, None).unwrap();
        bind(&s, &"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap()).unwrap();
        s
    };
    let quiet = TcpListener::from(bound(SocketType::STREAM));
    let at = quiet.local_addr().unwrap();
    assert!(
        TcpStream::connect(at).is_err(),
        "listening before rank 0 took it"
    );
    let mut w = world(0, 2, at.port());
    w.listen_fd = Some(quiet.into_raw_fd());
    let l = listen(&w).expect("the bound socket, listening");
    TcpStream::connect(at).expect("a peer connects");
    drop(l);
    // A datagram socket at the right address: refused, not an accept
    // loop failing for ever.
    let udp = std::net::UdpSocket::from(bound(SocketType::DGRAM));
    let port = udp.local_addr().unwrap().port();
    let mut w = world(0, 2, port);
    w.listen_fd = Some(udp.into_raw_fd());
    let err = listen(&w).unwrap_err().to_string();
    assert!(
        err.contains("cannot listen on it") && err.contains("TCP stream socket"),
        "{err}"
    );
    // Not a socket (a file): refused before it is taken.
    let file = tempfile::tempfile().unwrap();
    let mut w = world(0, 2, 2000);
    w.listen_fd = Some(file.into_raw_fd());
    let err = listen(&w).unwrap_err().to_string();
    assert!(err.contains("not an open socket"), "{err}");
}

/// Rank 0 of `size` waiting in a thread whose log lines are kept: its
/// port, the thread and the lines.
fn rank0_logged(
    size: usize,
) -> (
    u16,
    std::thread::JoinHandle<alexnet_cuda::Result<TcpAllReduce>>,
    Lines,
) {
    let listener = bind_at("127.0.0.1", 0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Lines::default();
    let kept = log.clone();
    let rank0 = std::thread::spawn(move || {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || kept.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        TcpAllReduce::accept(listener, &world(0, size, port), 1, None)
    });
    (port, rank0, log)
}

#[test]
fn strangers_are_refused_and_the_real_ranks_still_meet() {
    let (port, rank0, log) = rank0_logged(3);
    let connect = || TcpStream::connect(("127.0.0.1", port)).expect("connect");

    // Each step below waits for rank 0's answer (or its close) before the
    // next, so rank 0 sees them in this order.
    let r1 = TcpAllReduce::join(&world(1, 3, port), 1, None).expect("rank 1 joins");

    // Garbage: an HTTP request. Closed without an answer.
    let mut http = connect();
    let http_addr = http.local_addr().unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = http.read_to_end(&mut answer); // EOF, or a reset: unread bytes
    assert!(answer.is_empty(), "rank 0 answered garbage: {answer:?}");

    // A connection that says nothing and closes.
    let silent = connect();
    let silent_addr = silent.local_addr().unwrap();
    drop(silent);

    // Protocol-speaking processes with a wrong rank or world: each is told why.
    let out_of_range = error_of(TcpAllReduce::join(&world(7, 3, port), 1, None));
    assert!(out_of_range.contains("RANK=7"), "{out_of_range}");
    assert!(out_of_range.contains("out of range"), "{out_of_range}");
    let taken = error_of(TcpAllReduce::join(&world(1, 3, port), 1, None));
    assert!(taken.contains("already joined as RANK=1"), "{taken}");
    let other = error_of(TcpAllReduce::join(&world(2, 4, port), 1, None));
    assert!(other.contains("WORLD_SIZE"), "{other}");
    // Rank 0 reads one buffer per replica from each peer: two would shift
    // every buffer after the first.
    let replicas = error_of(TcpAllReduce::join(&world(2, 3, port), 2, None));
    assert!(
        replicas.contains("another number of replicas per process than this process's 2"),
        "{replicas}"
    );

    // The last real rank completes the rendezvous.
    let r2 = TcpAllReduce::join(&world(2, 3, port), 1, None).expect("rank 2 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets ranks 1 and 2");

    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    println!("{log}");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 6, "one warning per stranger:\n{log}");
    for w in &warnings {
        assert!(w.contains("refused a connection from 127.0.0.1:"), "{w}");
    }
    for (i, (peer, why)) in [
        (http_addr.to_string(), "not an alexnet-cuda rank"),
        (silent_addr.to_string(), "no full hello"),
        ("127.0.0.1:".into(), "RANK=7"),
        (
            "127.0.0.1:".into(),
            "RANK=1, which another process already has",
        ),
        ("127.0.0.1:".into(), "WORLD_SIZE=4"),
        (
            "127.0.0.1:".into(),
            "it drives 2 replicas, each process of this run 1",
        ),
    ]
    .iter()
    .enumerate()
    {
        let w = warnings[i];
        assert!(
            w.contains(peer.as_str()) && w.contains(why),
            "warning {i}: {w}"
        );
    }

    // The meeting is the real one: ranks 1 and 2 (not a stranger) are in
    // the mean.
    assert_mean_of_ranks([r0, r1, r2]);
}

/// Rank r contributes r + 1 everywhere: every rank gets the mean, 2.
fn assert_mean_of_ranks(reduces: [TcpAllReduce; 3]) {
    let handles: Vec<_> = reduces
        .into_iter()
        .enumerate()
        .map(|(r, mut reduce)| {
            std::thread::spawn(move || {
                let be = CpuBackend::new();
                let mut buf = be.alloc(5).unwrap();
                be.upload(&[r as f32 + 1.0; 5], &mut buf).unwrap();
                AllReduce::<CpuBackend>::mean(&mut reduce, 0, &[&be], &mut [&mut buf]).unwrap();
                let mut out = vec![0.0; 5];
                be.download(&buf, &mut out).unwrap();
                out
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), [2.0; 5]);
    }
}

/// A rank that joins early waits for the late ones as long as rank 0 does
/// (ALEXNET_CONNECT_TIMEOUT), not just the wait on a silent peer
/// (ALEXNET_PEER_TIMEOUT, here 1 s): rank 1 starts its first all-reduce,
/// rank 2 joins 3 s later, and all three get the mean.
#[test]
fn an_early_rank_waits_for_the_late_ones_longer_than_for_a_silent_peer() {
    let patient = |rank, port| World {
        connect_for: Duration::from_secs(60),
        peer_for: Duration::from_secs(1),
        ..world(rank, 3, port)
    };
    let (port, rank0) = rank0_accepting(patient, 1, None);
    let r1 = TcpAllReduce::join(&patient(1, port), 1, None).expect("rank 1 joins");
    let early = std::thread::spawn(move || mean_of(r1, 2.0));
    std::thread::sleep(Duration::from_secs(3));
    let r2 = TcpAllReduce::join(&patient(2, port), 1, None).expect("rank 2 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets ranks 1 and 2");
    let late = std::thread::spawn(move || mean_of(r2, 3.0));
    assert_eq!(mean_of(r0, 1.0), Ok([2.0; 5].to_vec()));
    assert_eq!(early.join().unwrap(), Ok([2.0; 5].to_vec()));
    assert_eq!(late.join().unwrap(), Ok([2.0; 5].to_vec()));
}

/// Rank 0 gives up on a rank that never comes: a rank that joined and
/// waits for the start hears of it as rank 0 closing, and says so.
#[test]
fn a_joined_rank_hears_when_rank_0_gives_up() {
    let (port, rank0) = rank0_accepting(brief, 1, None);
    let r1 = TcpAllReduce::join(
        &World {
            connect_for: Duration::from_secs(60),
            ..brief(1, port)
        },
        1,
        None,
    )
    .expect("rank 1 joins");
    assert!(rank0.join().unwrap().is_err(), "rank 2 never came");
    let err = mean_of(r1, 2.0).unwrap_err();
    assert!(
        err.contains("rank 1, waiting for the other ranks to join: rank 0 closed the connection before every rank had joined"),
        "{err}"
    );
}

/// A peer silent past ALEXNET_PEER_TIMEOUT (here 1 s) in the first
/// exchange is named as still starting (loading its data, building its
/// network: a slower start than the others' is the likely cause; rank 0
/// answers the others once every rank has), and in a later one as silent
/// over the gradients.
#[test]
fn a_silent_peer_is_named_by_the_exchange_it_missed() {
    let quick = |rank, port| World {
        peer_for: Duration::from_secs(1),
        ..world(rank, 2, port)
    };
    let (port, rank0) = rank0_accepting(quick, 1, None);
    let r1 = TcpAllReduce::join(&quick(1, port), 1, None).expect("rank 1 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets rank 1");
    let err = mean_of(r0, 1.0).unwrap_err();
    assert!(
        err.contains("waiting for rank 1 to load its data and build its network")
            && err.contains("nothing moved for 1 s"),
        "{err}"
    );
    drop(r1);
    let (port, rank0) = rank0_accepting(quick, 1, None);
    let r1 = TcpAllReduce::join(&quick(1, port), 1, None).expect("rank 1 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets rank 1");
    let err = mean_of(r1, 2.0).unwrap_err();
    assert!(
        err.contains("waiting for rank 0, which waits for every rank to load its data"),
        "{err}"
    );
    drop(r0);
    let (port, rank0) = rank0_accepting(quick, 1, None);
    let mut r1 = TcpAllReduce::join(&quick(1, port), 1, None).expect("rank 1 joins");
    let mut r0 = rank0.join().unwrap().expect("rank 0 meets rank 1");
    let first = std::thread::spawn(move || {
        let m = mean_once(&mut r1, 2.0);
        (m, r1)
    });
    assert_eq!(mean_once(&mut r0, 1.0), Ok([1.5; 5].to_vec()));
    let (m, r1) = first.join().unwrap();
    assert_eq!(m, Ok([1.5; 5].to_vec()));
    let err = mean_once(&mut r0, 1.0).unwrap_err();
    assert!(
        err.contains("receiving gradients from rank 1: nothing moved for 1 s"),
        "{err}"
    );
    drop(r1);
}

/// One all-reduce of five values `v` on one replica: the mean, or the error.
fn mean_of(mut reduce: TcpAllReduce, v: f32) -> Result<Vec<f32>, String> {
    mean_once(&mut reduce, v)
}

/// [`mean_of`] on a reduce kept for more.
fn mean_once(reduce: &mut TcpAllReduce, v: f32) -> Result<Vec<f32>, String> {
    let be = CpuBackend::new();
    let mut buf = be.alloc(5).unwrap();
    be.upload(&[v; 5], &mut buf).unwrap();
    AllReduce::<CpuBackend>::mean(reduce, 0, &[&be], &mut [&mut buf]).map_err(|e| e.to_string())?;
    let mut out = vec![0.0; 5];
    be.download(&buf, &mut out).unwrap();
    Ok(out)
}

/// Two processes of two replicas each: every replica gets the mean of all
/// four, (1 + 2 + 3 + 4) / 4, not of the processes' sums.
#[test]
fn the_mean_is_over_every_replica_of_every_process() {
    let (port, rank0) = rank0_accepting(|rank, port| world(rank, 2, port), 2, None);
    let r1 = TcpAllReduce::join(&world(1, 2, port), 2, None).expect("rank 1 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets rank 1");
    let run = |mut reduce: TcpAllReduce, rank: usize| {
        std::thread::spawn(move || {
            let devs = [CpuBackend::new(), CpuBackend::new()];
            let mut bufs: Vec<_> = devs.iter().map(|d| d.alloc(3).unwrap()).collect();
            for (j, b) in bufs.iter_mut().enumerate() {
                devs[j].upload(&[(2 * rank + j + 1) as f32; 3], b).unwrap();
            }
            let [b0, b1] = &mut bufs[..] else {
                unreachable!()
            };
            AllReduce::<CpuBackend>::mean(&mut reduce, 0, &[&devs[0], &devs[1]], &mut [b0, b1])
                .unwrap();
            let mut out = vec![0.0; 6];
            for (j, b) in bufs.iter().enumerate() {
                devs[j].download(b, &mut out[3 * j..3 * j + 3]).unwrap();
            }
            out
        })
    };
    let (h0, h1) = (run(r0, 0), run(r1, 1));
    assert_eq!(h0.join().unwrap(), [2.5; 6]);
    assert_eq!(h1.join().unwrap(), [2.5; 6]);
}

/// A rank that joins, dies while rank 0 waits for the others, and is
/// started again takes its old place: its first connection is closed, so
/// the RANK is free, not taken by "another process". The run then meets.
#[test]
fn a_rank_started_again_takes_the_place_of_its_closed_connection() {
    let (port, rank0) = rank0_accepting(|rank, port| world(rank, 3, port), 1, None);
    let first = TcpAllReduce::join(&world(1, 3, port), 1, None).expect("rank 1 joins");
    drop(first);
    let r1 = TcpAllReduce::join(&world(1, 3, port), 1, None).expect("rank 1 joins again");
    let r2 = TcpAllReduce::join(&world(2, 3, port), 1, None).expect("rank 2 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets ranks 1 and 2");
    assert_mean_of_ranks([r0, r1, r2]);
}

/// Processes of other builds or flags: a hello of another protocol
/// version is refused naming both versions; a buffer of another length is
/// an error naming the rank and both lengths, not bytes read out of step.
#[test]
fn another_build_or_buffer_length_is_named() {
    let (port, rank0, log) = rank0_logged(2);
    // An older build's hello: version 2, WORLD_SIZE 2, RANK 1, 1 replica.
    let mut old = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut hello = b"alexTCP2".to_vec();
    for w in [2u32, 1, 1] {
        hello.extend(w.to_le_bytes());
    }
    old.write_all(&hello).unwrap();
    let mut answer = Vec::new();
    let _ = old.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "rank 0 answered an older build: {answer:?}"
    );
    let r1 = TcpAllReduce::join(&world(1, 2, port), 1, None).expect("rank 1 joins");
    let r0 = rank0.join().unwrap().expect("rank 0 meets rank 1");
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("it speaks version 2 of the ranks' protocol, this build 4: run the same alexnet-cuda build in every process"),
        "{log}"
    );

    let reduce = |(mut reduce, len): (TcpAllReduce, usize)| {
        std::thread::spawn(move || {
            let be = CpuBackend::new();
            let mut buf = be.alloc(len).unwrap();
            AllReduce::<CpuBackend>::mean(&mut reduce, 0, &[&be], &mut [&mut buf])
                .map_err(|e| e.to_string())
        })
    };
    let (h0, h1) = (reduce((r0, 5)), reduce((r1, 6)));
    let err = h0.join().unwrap().unwrap_err();
    assert!(
        err.contains("rank 1 sent a buffer of 6 values where this process has 5"),
        "{err}"
    );
    // Rank 1 learns of it as rank 0 closing: no hang.
    assert!(h1.join().unwrap().is_err());
}

/// A rank that never comes: after ALEXNET_CONNECT_TIMEOUT (here 1 s)
/// rank 0 names the missing rank and the connections it refused, and a
/// rank that cannot reach rank 0 names the address and what to check.
#[test]
fn a_rank_that_never_comes_is_named_when_the_wait_ends() {
    let (port, rank0) = rank0_accepting(brief, 1, None);
    let _r1 = TcpAllReduce::join(&brief(1, port), 1, None).expect("rank 1 joins");
    let mut stranger = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stranger_at = stranger.local_addr().unwrap();
    stranger.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").unwrap();
    let start = Instant::now();
    let err = rank0.join().unwrap().map(|_| ()).unwrap_err().to_string();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let said = format!(
        "rank 0 waited 1 s at 127.0.0.1:{port} for ranks [2]; refused: {stranger_at} (its hello is not an alexnet-cuda rank's): start them with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE"
    );
    assert!(err.contains(&said), "{err}");

    let nobody = port_nobody_listens_at();
    let lone = World {
        connect_for: Duration::from_secs(1),
        ..world(1, 2, nobody)
    };
    let err = error_of(TcpAllReduce::join(&lone, 1, None));
    // With why the last try failed: nothing listens there.
    let said = format!(
        "rank 1 could not reach rank 0 at 127.0.0.1:{nobody} in 1 s (last try: Connection refused"
    );
    assert!(err.contains(&said), "{err}");
    assert!(
        err.ends_with(": start rank 0, and check MASTER_ADDR and MASTER_PORT"),
        "{err}"
    );
    // An IPv6 address is shown in brackets, as it is written with a port.
    let v6 = World {
        master: Some(("::1".into(), nobody - 1)),
        ..lone.clone()
    };
    let err = error_of(TcpAllReduce::join(&v6, 1, None));
    assert!(
        err.contains(&format!("rank 0 at [::1]:{nobody} in 1 s")),
        "{err}"
    );

    // A listener that takes the connection (the kernel's backlog) but
    // never answers the hello: a wait that ran out, not a refusal.
    let silent = bind_at("127.0.0.1", 0).unwrap();
    let port = silent.local_addr().unwrap().port();
    let err = error_of(TcpAllReduce::join(&brief(1, port), 1, None));
    let said = format!("rank 1: 127.0.0.1:{port} did not answer this process's hello in 1 s; rank 0 may still be starting");
    assert!(err.contains(&said), "{err}");
}

/// A signal during the rendezvous (train's stop flag set) ends each wait
/// at once with `Error::Stopped` naming what was awaited, long before the
/// time a missing rank is given: rank 0 waiting for rank 1, rank 1 trying
/// to reach a rank 0 that is not there, and a joined rank waiting for the
/// others.
#[test]
fn a_stop_ends_the_wait_for_other_ranks() {
    let stop_later = |stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let listener = bind_at("127.0.0.1", 0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let setter = stop_later(Arc::clone(&stop));
    let start = Instant::now();
    let r0 = TcpAllReduce::accept(listener, &world(0, 2, port), 1, Some(&stop));
    setter.join().unwrap();
    let waited = start.elapsed();
    assert!(
        matches!(&r0, Err(Error::Stopped(m)) if m.contains("rank 0 waited at 127.0.0.1") && m.contains("[1]")),
        "{:?}",
        r0.err()
    );
    assert!(waited < Duration::from_secs(30), "rank 0 waited {waited:?}");

    // Nothing listens at `port`: rank 1 retries until the stop.
    let port = port_nobody_listens_at();
    let stop = Arc::new(AtomicBool::new(false));
    let setter = stop_later(Arc::clone(&stop));
    let start = Instant::now();
    let r1 = TcpAllReduce::join(&world(1, 2, port), 1, Some(&stop));
    setter.join().unwrap();
    let waited = start.elapsed();
    assert!(
        matches!(&r1, Err(Error::Stopped(m)) if m.contains("rank 1 tried to reach rank 0")),
        "{:?}",
        r1.err()
    );
    assert!(waited < Duration::from_secs(30), "rank 1 waited {waited:?}");

    // A MASTER_ADDR that does not resolve (yet: a scheduler's record for
    // rank 0's node may appear once it runs) is retried too, not an error
    // at once. `.invalid` never resolves (RFC 2606).
    let stop = Arc::new(AtomicBool::new(false));
    let setter = stop_later(Arc::clone(&stop));
    let mut unnamed = world(1, 2, port);
    unnamed.master = Some(("rank0.invalid".into(), port - 1));
    let r1 = TcpAllReduce::join(&unnamed, 1, Some(&stop));
    setter.join().unwrap();
    assert!(
        matches!(&r1, Err(Error::Stopped(m)) if m.contains("rank 1 tried to reach rank 0 at rank0.invalid")),
        "{:?}",
        r1.err()
    );

    // A listener that takes the connection but never answers (a rank 0
    // still loading, or another program), with a wait of 600 s.
    let silent = bind_at("127.0.0.1", 0).unwrap();
    let port = silent.local_addr().unwrap().port();
    let patient = World {
        connect_for: Duration::from_secs(600),
        ..world(1, 2, port)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let setter = stop_later(Arc::clone(&stop));
    let start = Instant::now();
    let r1 = TcpAllReduce::join(&patient, 1, Some(&stop));
    setter.join().unwrap();
    let waited = start.elapsed();
    let said = format!("rank 1 waited for rank 0 at 127.0.0.1:{port} to answer its hello");
    assert!(
        matches!(&r1, Err(Error::Stopped(m)) if m.contains(&said)),
        "{:?}",
        r1.err()
    );
    assert!(waited < Duration::from_secs(30), "rank 1 waited {waited:?}");

    // A rank that joined and waits for the others to join (rank 2 never
    // comes, and the wait is 600 s): its first all-reduce ends at the signal.
    let long = |rank, port| World {
        connect_for: Duration::from_secs(600),
        ..world(rank, 3, port)
    };
    let stop0 = Arc::new(AtomicBool::new(false));
    let (port, rank0) = rank0_accepting(long, 1, Some(Arc::clone(&stop0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut r1 = TcpAllReduce::join(&long(1, port), 1, Some(&stop)).expect("rank 1 joins");
    let setter = stop_later(Arc::clone(&stop));
    let start = Instant::now();
    let be = CpuBackend::new();
    let mut buf = be.alloc(5).unwrap();
    let r = AllReduce::<CpuBackend>::mean(&mut r1, 0, &[&be], &mut [&mut buf]);
    setter.join().unwrap();
    let waited = start.elapsed();
    assert!(
        matches!(&r, Err(Error::Stopped(m)) if m.contains("rank 1 waited for the other ranks")),
        "{r:?}"
    );
    assert!(waited < Duration::from_secs(30), "rank 1 waited {waited:?}");
    stop0.store(true, Ordering::Relaxed);
    assert!(matches!(rank0.join().unwrap(), Err(Error::Stopped(_))));
}

/// A connection that opens and says nothing holds rank 0 in its hello for
/// neither longer than a signal takes (it waited the hello's 10 s) nor past
/// the deadline for the ranks to join.
#[test]
fn a_silent_connection_holds_rank_0_past_neither_a_stop_nor_its_deadline() {
    let stop = Arc::new(AtomicBool::new(false));
    let (port, rank0) = rank0_accepting(|r, p| world(r, 2, p), 1, Some(Arc::clone(&stop)));
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let r0 = rank0.join().unwrap();
    let waited = start.elapsed();
    assert!(matches!(&r0, Err(Error::Stopped(_))), "{:?}", r0.err());
    assert!(waited < Duration::from_secs(5), "stopped after {waited:?}");

    let start = Instant::now();
    let (port, rank0) = rank0_accepting(brief, 1, None);
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let err = rank0.join().unwrap().map(|_| ()).unwrap_err().to_string();
    let waited = start.elapsed();
    assert!(err.contains("rank 0 waited 1 s"), "{err}");
    assert!(err.contains("no full hello: 0 of"), "{err}");
    assert!(waited < Duration::from_secs(5), "gave up after {waited:?}");
}
