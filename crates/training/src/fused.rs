//! The RMSprop update as one loop over an optimizer chunk's flat float32 CPU buffers.
//!
//! Written with libtorch's element-wise operations the update is five passes (see
//! `optim::update`) that together move 13 buffer-lengths of memory per step; as one loop it moves
//! five (read the parameters, gradients and slot; write the parameters and slot). For the top of
//! VGG16 and the seed's head (7.6 M parameters, 30 MB a buffer) the update is memory-bound, so
//! this is what the optimizer's share of a cached-trunk fine-tuning epoch is made of.
//!
//! Same arithmetic as the tensor version, element by element in float32: `g += wd p`,
//! `w' = w + (1 - rho) ((g^2 + eps) - w)` (the slot holds Keras' `v + eps`), `p -= lr g / sqrt(w')`.
//! Results may differ from it in the last bit (libtorch may fuse a multiply-add); they do not
//! differ between runs, thread counts or resumes, which is what exact resume needs.

use tch::{Device, Kind, Tensor};

/// RMSprop hyper-parameters in the loop's precision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rmsprop {
    pub lr: f32,
    pub rho: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// Applies one RMSprop step in place when all three buffers are contiguous float32 CPU tensors of
/// one length (an optimizer chunk); returns false, touching nothing, otherwise.
pub(crate) fn rmsprop(params: &Tensor, grads: &Tensor, slot: &Tensor, hp: Rmsprop) -> bool {
    let n = params.numel();
    let fits = |t: &Tensor| {
        t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() == n
    };
    if !(fits(params) && fits(grads) && fits(slot)) || n == 0 {
        return false;
    }
    let distinct = params.data_ptr() != grads.data_ptr()
        && params.data_ptr() != slot.data_ptr()
        && grads.data_ptr() != slot.data_ptr();
    assert!(distinct, "an optimizer chunk's buffers are separate allocations");
    // SAFETY: each tensor is a contiguous float32 CPU tensor of exactly `n` elements (checked
    // above), so its data pointer addresses `n` initialised, aligned f32 values; the three are
    // separate allocations made by `Optimizer::new` (asserted), so the mutable slices do not
    // alias each other or the shared one. Nothing else touches them during the step: libtorch
    // runs no operation while the optimizer does (autograd has finished, the CPU is synchronous).
    #[allow(unsafe_code)]
    let (p, g, w) = unsafe {
        (
            std::slice::from_raw_parts_mut(params.data_ptr().cast::<f32>(), n),
            std::slice::from_raw_parts(grads.data_ptr().cast::<f32>(), n),
            std::slice::from_raw_parts_mut(slot.data_ptr().cast::<f32>(), n),
        )
    };
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).clamp(1, 16);
    // Pieces of whole cache lines, at least 64 K elements each (small updates stay on one thread).
    let piece = n.div_ceil(threads).max(1 << 16).next_multiple_of(16);
    if piece >= n {
        update(p, g, w, hp);
        return true;
    }
    std::thread::scope(|scope| {
        for ((p, g), w) in p.chunks_mut(piece).zip(g.chunks(piece)).zip(w.chunks_mut(piece)) {
            scope.spawn(move || update(p, g, w, hp));
        }
    });
    true
}

fn update(p: &mut [f32], g: &[f32], w: &mut [f32], hp: Rmsprop) {
    let Rmsprop { lr, rho, eps, weight_decay } = hp;
    let keep = 1.0 - rho;
    for ((p, &g), w) in p.iter_mut().zip(g).zip(w.iter_mut()) {
        let g = if weight_decay > 0.0 { g + weight_decay * *p } else { g };
        let next = *w + keep * ((g * g + eps) - *w);
        *w = next;
        *p += (-lr * g) / next.sqrt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop against the same formula in float64 on random values, single- and multi-threaded.
    #[test]
    fn matches_the_formula_in_double_precision() {
        tch::manual_seed(7);
        for n in [5i64, 300_001] {
            let p = Tensor::randn([n], (Kind::Float, Device::Cpu));
            let g = Tensor::randn([n], (Kind::Float, Device::Cpu)) * 1e-2;
            let w = Tensor::rand([n], (Kind::Float, Device::Cpu)) * 1e-3 + 1e-7;
            let hp = Rmsprop { lr: 1e-3, rho: 0.9, eps: 1e-7, weight_decay: 1e-2 };
            let (p64, g64, w64) =
                (p.to_kind(Kind::Double), g.to_kind(Kind::Double), w.to_kind(Kind::Double));
            let g64 = &g64 + &p64 * f64::from(hp.weight_decay);
            let w_next =
                &w64 + (&g64 * &g64 + f64::from(hp.eps) - &w64) * (1.0 - f64::from(hp.rho));
            let p_next = &p64 - &g64 * f64::from(hp.lr) / w_next.sqrt();
            assert!(rmsprop(&p, &g, &w, hp));
            let rel = |a: &Tensor, b: &Tensor| {
                f64::try_from((a.to_kind(Kind::Double) - b).abs().max()).unwrap()
                    / f64::try_from(b.abs().max()).unwrap()
            };
            assert!(rel(&w, &w_next) < 1e-6, "slot off by {}", rel(&w, &w_next));
            assert!(rel(&p, &p_next) < 1e-6, "parameters off by {}", rel(&p, &p_next));
        }
    }

    #[test]
    fn declines_what_it_cannot_update_in_place() {
        let w = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let hp = Rmsprop { lr: 1e-3, rho: 0.9, eps: 1e-7, weight_decay: 0.0 };
        let double = Tensor::ones([4], (Kind::Double, Device::Cpu));
        assert!(!rmsprop(&double, &double.copy(), &w, hp), "float64 is left to libtorch");
        let strided = Tensor::ones([8], (Kind::Float, Device::Cpu)).slice(0, 0, 8, 2);
        assert!(!rmsprop(&strided, &w.copy(), &w, hp), "a strided view is left to libtorch");
        assert!(
            !rmsprop(&w.copy(), &Tensor::ones([5], (Kind::Float, Device::Cpu)), &w, hp),
            "lengths differ"
        );
        assert_eq!(Vec::<f32>::try_from(&w).unwrap(), vec![1.0; 4], "nothing touched");
    }
}
