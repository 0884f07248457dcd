//! PCA lighting noise (paper section 4.1): to every pixel of a training image
//! add p1 a1 l1 + p2 a2 l2 + p3 a3 l3, where p_i, l_i are the eigenvectors
//! and eigenvalues of the 3x3 covariance of RGB pixel values over the
//! training set and a_i ~ N(0, 0.1) is drawn once per image per epoch.
//! "This scheme approximately captures ... that object identity is invariant
//! to changes in the intensity and color of the illumination."
//!
//! Scale: the paper does not say in which units the covariance is taken; its
//! eigenvalues grow with the square of that unit, so the offset in grey
//! levels grows with the unit itself (x255 from [0, 1]). We take it over pixel
//! values scaled to [0, 1], as common implementations do: on natural images
//! the largest eigenvalue is then about 0.15 and a typical offset a few grey
//! levels. In 0..255 units the same formula would shift pixels by hundreds.

/// Pixel values are divided by this before the covariance is taken.
pub const UNIT: f32 = 255.0;

/// Principal components of RGB pixel values scaled to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pca {
    /// Eigenvalues, largest first.
    pub eigvals: [f32; 3],
    /// Unit eigenvectors (R, G, B), `eigvecs[i]` belonging to `eigvals[i]`.
    pub eigvecs: [[f32; 3]; 3],
}

impl Pca {
    /// PCA of the covariance of RGB pixel values in 0..255 units.
    pub fn from_covariance(cov: [[f64; 3]; 3]) -> Pca {
        let unit2 = (UNIT as f64) * (UNIT as f64);
        let (vals, vecs) = sym3_eigen(cov.map(|row| row.map(|v| v / unit2)));
        Pca {
            // Rounding can leave a tiny negative eigenvalue of a singular matrix.
            eigvals: vals.map(|v| v.max(0.0) as f32),
            eigvecs: vecs.map(|v| v.map(|x| x as f32)),
        }
    }

    /// The RGB offset for one image, in 0..255 units: UNIT * sum_i alpha_i l_i p_i.
    pub fn offset(&self, alpha: [f32; 3]) -> [f32; 3] {
        let mut out = [0f32; 3];
        for ((a, l), vec) in alpha.iter().zip(self.eigvals).zip(self.eigvecs) {
            for (o, p) in out.iter_mut().zip(vec) {
                *o += UNIT * a * l * p;
            }
        }
        out
    }
}

/// Eigenvalues (descending) and unit eigenvectors of a symmetric 3x3 matrix,
/// by cyclic Jacobi rotations (Golub and Van Loan, section 8.5): each
/// rotation zeroes one off-diagonal entry; a few sweeps reach f64 precision.
pub fn sym3_eigen(mut a: [[f64; 3]; 3]) -> ([f64; 3], [[f64; 3]; 3]) {
    // v's columns accumulate the rotations: a = v diag v^T at the end.
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..50 {
        let off = a[0][1].abs() + a[0][2].abs() + a[1][2].abs();
        let scale = a[0][0].abs() + a[1][1].abs() + a[2][2].abs();
        if off <= 1e-15 * scale || off == 0.0 {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if a[p][q] == 0.0 {
                continue;
            }
            // Choose the rotation angle so that the new a[p][q] is zero.
            let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // a <- J^T a J with J the rotation in the (p, q) plane.
            for row in a.iter_mut() {
                let (akp, akq) = (row[p], row[q]);
                row[p] = c * akp - s * akq;
                row[q] = s * akp + c * akq;
            }
            let (rp, rq) = (a[p], a[q]);
            a[p] = [0, 1, 2].map(|k| c * rp[k] - s * rq[k]);
            a[q] = [0, 1, 2].map(|k| s * rp[k] + c * rq[k]);
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| a[j][j].total_cmp(&a[i][i]));
    let vals = order.map(|i| a[i][i]);
    let vecs = order.map(|i| [v[0][i], v[1][i], v[2][i]]);
    (vals, vecs)
}
