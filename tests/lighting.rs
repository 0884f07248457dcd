//! PCA lighting noise (paper section 4.1) against hand-computed cases: the
//! 3x3 eigen-solver, the RGB covariance of a known set, and the loader's
//! per-image offset p1 a1 l1 + p2 a2 l2 + p3 a3 l3.
use std::sync::Arc;

use alexnet_cuda::data::lighting::sym3_eigen;
use alexnet_cuda::data::{batches, lighting_alpha, ImageSet, Lighting, LoaderConfig, Pca};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

/// Same direction up to sign.
fn same_axis(v: [f64; 3], w: [f64; 3]) -> bool {
    let dot: f64 = v.iter().zip(w).map(|(a, b)| a * b).sum();
    close(dot.abs(), 1.0, 1e-12)
}

#[test]
fn eigen_of_a_hand_computed_matrix() {
    // [[2,1,0],[1,2,0],[0,0,5]]: eigenvalues 5, 3, 1 with eigenvectors
    // (0,0,1), (1,1,0)/sqrt2, (1,-1,0)/sqrt2.
    let (vals, vecs) = sym3_eigen([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 5.0]]);
    let r = 0.5f64.sqrt();
    for (got, want) in vals.iter().zip([5.0, 3.0, 1.0]) {
        assert!(close(*got, want, 1e-12), "eigenvalues {vals:?}");
    }
    assert!(same_axis(vecs[0], [0.0, 0.0, 1.0]), "{vecs:?}");
    assert!(same_axis(vecs[1], [r, r, 0.0]), "{vecs:?}");
    assert!(same_axis(vecs[2], [r, -r, 0.0]), "{vecs:?}");
}

#[test]
fn eigen_satisfies_av_equals_lambda_v() {
    let a = [[4.0, -2.0, 1.5], [-2.0, 3.0, 0.25], [1.5, 0.25, 1.0]];
    let (vals, vecs) = sym3_eigen(a);
    assert!(vals[0] >= vals[1] && vals[1] >= vals[2], "{vals:?}");
    // Trace and determinant are preserved: 8 and det(a) by cofactors.
    let det = 4.0 * (3.0 * 1.0 - 0.25 * 0.25)
        + 2.0 * (-2.0 * 1.0 - 0.25 * 1.5)
        + 1.5 * (-2.0 * 0.25 - 3.0 * 1.5);
    assert!(close(vals.iter().sum(), 8.0, 1e-12));
    assert!(close(vals.iter().product(), det, 1e-12));
    for (l, v) in vals.iter().zip(vecs) {
        for (row, &vr) in a.iter().zip(&v) {
            let av: f64 = row.iter().zip(v).map(|(x, y)| x * y).sum();
            assert!(close(av, l * vr, 1e-10), "A v != lambda v for {l}");
        }
    }
    for i in 0..3 {
        for j in 0..3 {
            let dot: f64 = vecs[i].iter().zip(vecs[j]).map(|(a, b)| a * b).sum();
            assert!(
                close(dot, if i == j { 1.0 } else { 0.0 }, 1e-12),
                "not orthonormal"
            );
        }
    }
}

#[test]
fn covariance_of_a_known_set() {
    // Pixels alternate (0,0,10) and (50,100,10): mean (25,50,10); the
    // covariance is [[625,1250,0],[1250,2500,0],[0,0,0]], rank one, with
    // eigenvalue 625 + 2500 = 3125 along (1,2,0)/sqrt5; on the [0, 1] scale
    // the PCA uses, 3125 / 255^2.
    let px: Vec<u8> = (0..2 * 4)
        .flat_map(|i| {
            if i % 2 == 0 {
                [0, 0, 10]
            } else {
                [50, 100, 10]
            }
        })
        .collect();
    let set = ImageSet::from_parts(2, px, vec![0, 1], vec!["a".into(), "b".into()]).unwrap();
    let (mean, cov) = set.rgb_moments(&[0, 1]).unwrap();
    assert_eq!(mean, [25.0, 50.0, 10.0]);
    assert_eq!(
        cov,
        [[625.0, 1250.0, 0.0], [1250.0, 2500.0, 0.0], [0.0, 0.0, 0.0]]
    );
    let pca = Pca::from_covariance(cov);
    assert!(
        close(pca.eigvals[0] as f64, 3125.0 / 65025.0, 1e-6),
        "{pca:?}"
    );
    assert!(
        pca.eigvals[1].abs() < 1e-3 && pca.eigvals[2].abs() < 1e-3,
        "{pca:?}"
    );
    let v = pca.eigvecs[0].map(|x| x as f64);
    let s = 5f64.sqrt();
    assert!(
        (v[0].abs() - 1.0 / s).abs() < 1e-6 && (v[1].abs() - 2.0 / s).abs() < 1e-6,
        "{v:?}"
    );
    assert!(set.rgb_moments(&[]).is_none());
}

fn cfg(train: bool, lighting: Option<Lighting>) -> LoaderConfig {
    LoaderConfig {
        seed: 9,
        workers: 1,
        lighting,
        ..LoaderConfig::new(8, 4, train)
    }
}

#[test]
fn loader_adds_the_papers_offset_to_every_pixel() {
    // A uniform grey set, so crops and flips change nothing and the only
    // change to a pixel is the lighting offset.
    let set = Arc::new(
        ImageSet::from_parts(4, vec![100; 8 * 4 * 4 * 3], vec![0; 8], vec!["a".into()]).unwrap(),
    );
    // Components p1 = (1, 1, 0)/sqrt2, p2 = (-1, 1, 0)/sqrt2, p3 = (0, 0, 1),
    // each row of `eigvecs` one of them (a basis not symmetric, so reading
    // a column for a row would show): the offset 255 * sum_i alpha_i l_i p_i
    // is 255 * ((0.04 a1 - 0.02 a2)/sqrt2, (0.04 a1 + 0.02 a2)/sqrt2, 0.01 a3).
    let r = std::f32::consts::FRAC_1_SQRT_2;
    let pca = Pca {
        eigvals: [0.04, 0.02, 0.01],
        eigvecs: [[r, r, 0.0], [-r, r, 0.0], [0.0, 0.0, 1.0]],
    };
    let light = Some(Lighting { pca, sigma: 0.1 });
    let c = cfg(true, light);
    let idx: Vec<usize> = (0..8).collect();
    let b = batches(set.clone(), &idx, &c, 3)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let plane = 16;
    for pos in 0..8 {
        let a = lighting_alpha(&c, 3, pos);
        let want = [
            100.0 + 255.0 * r * (0.04 * a[0] - 0.02 * a[1]),
            100.0 + 255.0 * r * (0.04 * a[0] + 0.02 * a[1]),
            100.0 + 255.0 * 0.01 * a[2],
        ];
        for (ch, w) in want.iter().enumerate() {
            let p = &b.x[(pos * 3 + ch) * plane..][..plane];
            assert!(
                p.iter().all(|&v| (v - w).abs() < 1e-4),
                "image {pos} channel {ch}: {p:?} vs {w}"
            );
        }
    }
    // Evaluation adds nothing.
    let e = batches(set, &idx, &cfg(false, light), 3)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(e.x.iter().all(|&v| v == 100.0));
}

#[test]
fn lighting_coefficients_are_n_0_sigma_per_image_and_epoch() {
    let pca = Pca {
        eigvals: [1.0; 3],
        eigvecs: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    };
    let c = cfg(true, Some(Lighting { pca, sigma: 0.1 }));
    let draws: Vec<f64> = (0..20_000)
        .flat_map(|p| lighting_alpha(&c, 1, p))
        .map(f64::from)
        .collect();
    let n = draws.len() as f64;
    let mean = draws.iter().sum::<f64>() / n;
    let std = (draws.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n).sqrt();
    assert!(mean.abs() < 0.003, "mean {mean}");
    assert!((std - 0.1).abs() < 0.003, "std {std}");
    // Replayable: a config built anew draws the same, so the draw depends
    // on (seed, epoch, position) alone, not on what was drawn before.
    let again = cfg(true, Some(Lighting { pca, sigma: 0.1 }));
    assert_eq!(
        lighting_alpha(&again, 1, 5),
        lighting_alpha(&c, 1, 5),
        "replayable"
    );
    assert_ne!(
        lighting_alpha(&c, 1, 5),
        lighting_alpha(&c, 2, 5),
        "redrawn each epoch"
    );
    assert_eq!(lighting_alpha(&cfg(true, None), 1, 5), [0.0; 3]);
}
