//! The scaling table (src/model/scaling.rs) against numbers worked out here
//! from the paper's sizes: parameter count, the exchanges, the ring.
use alexnet_cuda::model::scaling::{render, ring_bytes, rows, Scheme};
use alexnet_cuda::model::topology::Topology;

const PARAMS: u64 = 60_965_224;
const GRAD_BYTES: u64 = PARAMS * 4;

#[test]
fn ring_all_reduce_sends_two_times_n_minus_one_over_n() {
    assert_eq!(ring_bytes(1000, 1), 0);
    assert_eq!(ring_bytes(1000, 2), 1000);
    assert_eq!(ring_bytes(1000, 4), 1500);
    assert_eq!(ring_bytes(1000, 8), 1750);
}

#[test]
fn rows_for_the_papers_net_at_batch_128() {
    let t = Topology::alexnet();
    // Two GPUs: the paper's towers, and two replicas.
    let r2 = rows(&t, 128, 2).unwrap();
    let model = r2.iter().find(|r| r.scheme == Scheme::Model).unwrap();
    // Per image each tower sends half of conv3's input (256x13x13), fc6's
    // (256x6x6), fc7's and fc8's (4096) forward, as much gradient back,
    // and half of the 1000 logits.
    let per_image = (2 * (256 * 13 * 13 + 256 * 6 * 6 + 4096 + 4096) + 1000) / 2;
    assert_eq!(model.bytes(), (per_image * 128 * 4) as u64);
    assert_eq!(model.compute_share, 0.5);
    let data = r2.iter().find(|r| r.scheme == Scheme::Data).unwrap();
    assert_eq!(
        data.bytes(),
        GRAD_BYTES,
        "2 replicas: each sends the whole gradient once"
    );
    // Eight GPUs: four pairs of towers at 32 images each, each tower's half
    // of the parameters all-reduced over the four pairs.
    let r8 = rows(&t, 128, 8).unwrap();
    assert!(r8.iter().all(|r| r.scheme != Scheme::Model));
    let hybrid = r8.iter().find(|r| r.scheme == Scheme::Hybrid).unwrap();
    assert_eq!(hybrid.gradient_bytes, 2 * 3 * (GRAD_BYTES / 2) / 4);
    assert_eq!(hybrid.activation_bytes, (per_image * 32 * 4) as u64);
    assert_eq!(hybrid.compute_share, 1.0 / 8.0);
    // Communication time: bytes over the link.
    let (comm_ms, ..) = data.times(14.0, 50.0);
    assert!((comm_ms - GRAD_BYTES as f64 / 50e9 * 1e3).abs() < 1e-9);
}

/// A batch that does not split evenly over the replicas, which `train`
/// refuses (`replicas::shard_size`): no row.
#[test]
fn no_row_for_a_batch_the_replicas_do_not_split_evenly() {
    let t = Topology::alexnet();
    let schemes = |batch, gpus| -> Vec<Scheme> {
        rows(&t, batch, gpus)
            .unwrap()
            .iter()
            .map(|r| r.scheme)
            .collect()
    };
    // 3 images: not over 2 replicas (the towers take the whole batch), 8
    // replicas or 4 pairs.
    assert_eq!(schemes(3, 2), [Scheme::Model]);
    assert_eq!(schemes(3, 8), []);
    // 4 images on 8 GPUs: no data-parallel row, but 4 pairs of towers get one each.
    assert_eq!(schemes(4, 8), [Scheme::Hybrid]);
    // 6 on 4 GPUs: 2 pairs of 3, not 4 replicas; 8 on 4: both.
    assert_eq!(schemes(6, 4), [Scheme::Hybrid]);
    assert_eq!(schemes(8, 4), [Scheme::Data, Scheme::Hybrid]);
}

/// Where no scheme applies, the table says why rather than stand empty.
#[test]
fn a_table_without_rows_says_why() {
    let half = Topology::by_name("alexnet-half").unwrap();
    let text = render(&half, 1, 5.0).unwrap();
    assert!(text.contains("no scheme runs a batch of 1"), "{text}");
    assert!(!render(&Topology::alexnet(), 1, 5.0)
        .unwrap()
        .contains("no scheme"));
}
