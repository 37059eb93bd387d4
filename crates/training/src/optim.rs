//! Optimizers with Keras semantics and state that can be saved and restored exactly.
//!
//! tch's built-in optimizers keep their state inside libtorch where it cannot be checkpointed, and
//! torch's RMSprop differs from Keras' (alpha 0.99 vs rho 0.9, eps 1e-8 outside the square root vs
//! 1e-7 inside). These are written on tensors instead:
//! - RMSprop (Keras 3 / tf.keras): `v = rho v + (1 - rho) g^2; p -= lr g / sqrt(v + eps)`.
//!   (Keras 2.0.8, the book's, added eps outside the root; at lr 2e-5 the two agree to float
//!   precision whenever `v >> eps`.)
//! - Adam (Keras): `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//!   p -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)`, eps 1e-7.
//!
//! Weight decay, when set, is L2 added to the gradient (`g += wd p`), as torch's `weight_decay`.
//!
//! Speed: the parameters of an optimizer live in one flat buffer (per kind and device), and so do
//! their gradients, slots and a scratch buffer, so an RMSprop update is five large element-wise
//! passes however many tensors the model has (see [`Optimizer`]), and one hand-written loop for
//! float32 on the CPU (`fused`).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, TchError, Tensor};

/// Optimizer choice and hyper-parameters (serialised into configs and checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimizerSpec {
    Rmsprop { lr: f64, rho: f64, eps: f64, weight_decay: f64 },
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl OptimizerSpec {
    /// Keras `RMSprop(learning_rate=lr)` defaults.
    pub fn rmsprop(lr: f64) -> Self {
        Self::Rmsprop { lr, rho: 0.9, eps: 1e-7, weight_decay: 0.0 }
    }

    /// Keras `Adam(learning_rate=lr)` defaults.
    pub fn adam(lr: f64) -> Self {
        Self::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-7, weight_decay: 0.0 }
    }

    pub fn lr(&self) -> f64 {
        match *self {
            Self::Rmsprop { lr, .. } | Self::Adam { lr, .. } => lr,
        }
    }

    pub fn with_weight_decay(mut self, wd: f64) -> Self {
        match &mut self {
            Self::Rmsprop { weight_decay, .. } | Self::Adam { weight_decay, .. } => {
                *weight_decay = wd
            }
        }
        self
    }

    /// Slot names (checkpoint tensors `optim.<slot>.<param>`) with their initial values.
    fn slots(&self) -> Vec<(&'static str, f64)> {
        match *self {
            // RMSprop keeps `v + eps` (see `update`), which starts at eps.
            Self::Rmsprop { eps, .. } => vec![("v_eps", eps)],
            Self::Adam { .. } => vec![("m", 0.0), ("v", 0.0)],
        }
    }
}

/// The optimizer a stage's `--optimizer` flag names (`rmsprop` or `adam`, the same spelling in
/// every stage), with Keras' default hyper-parameters at the learning rate given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    /// Keras RMSprop (rho 0.9, epsilon 1e-7)
    Rmsprop,
    /// Keras Adam (beta1 0.9, beta2 0.999, epsilon 1e-7)
    Adam,
}

impl OptimizerChoice {
    /// The spec with Keras' defaults at learning rate `lr` (no weight decay).
    pub fn spec(self, lr: f64) -> OptimizerSpec {
        match self {
            Self::Rmsprop => OptimizerSpec::rmsprop(lr),
            Self::Adam => OptimizerSpec::adam(lr),
        }
    }
}

/// One trainable tensor: its handle (after [`Optimizer::new`], a view into its chunk's buffer)
/// and views of the same element range in the chunk's gradient, slot and scratch buffers.
#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    grad: Tensor,
    slots: Vec<Tensor>,
    scratch: Tensor,
}

/// Parameters of one kind and device stored back to back in flat `[total]` buffers.
#[derive(Debug)]
struct Chunk {
    /// Indices into `Optimizer::params`, in name order.
    members: Vec<usize>,
    params: Tensor,
    grads: Tensor,
    slots: Vec<Tensor>,
    scratch: Tensor,
}

/// An optimizer over a fixed, named list of parameters.
///
/// [`Optimizer::new`] moves the parameters' storage into one flat buffer per (kind, device) with
/// `set_data` (every handle of a variable, in its `VarStore` and in the model, sees the move;
/// the values are copied exactly, the per-tensor views are contiguous). After the first backward
/// pass [`Optimizer::step`] moves the gradients into a second flat buffer the same way; libtorch's
/// autograd then accumulates later gradients in place into it (`grad += new` when a gradient
/// exists and no graph is being built), and [`Optimizer::zero_grad`] zeroes it in one operation.
/// So an update is a few large element-wise operations instead of a loop over tensors. A
/// gradient found elsewhere (a caller replaced it) is copied back in and adopted again; a
/// parameter without a gradient makes that step update the others one by one, leaving its own
/// state as it was.
#[derive(Debug)]
pub struct Optimizer {
    spec: OptimizerSpec,
    params: Vec<Param>,
    chunks: Vec<Chunk>,
    steps: i64,
}

/// The element-wise update of matching tensors: a whole chunk or a single parameter.
///
/// In place on the slots, the gradient and the scratch buffer, with as few passes over memory as
/// the operations libtorch exports allow (its `addcmul`/`addcdiv` take no `value` here): RMSprop
/// is five passes where the textbook sequence takes eight, and allocates nothing large.
fn update(
    spec: OptimizerSpec,
    t: f64,
    p: &mut Tensor,
    g: &mut Tensor,
    slots: &mut [Tensor],
    s: &mut Tensor,
) -> Result<(), TchError> {
    match spec {
        OptimizerSpec::Rmsprop { lr, rho, eps, weight_decay } => {
            // Float32 on the CPU: one pass instead of five (crate::fused).
            let hp = crate::fused::Rmsprop {
                lr: lr as f32,
                rho: rho as f32,
                eps: eps as f32,
                weight_decay: weight_decay as f32,
            };
            if crate::fused::rmsprop(p, g, &slots[0], hp) {
                return Ok(());
            }
            add_weight_decay(g, p, weight_decay)?;
            // The slot holds w = v + eps: w' = rho w + (1 - rho) (g^2 + eps) is Keras'
            // v' = rho v + (1 - rho) g^2 plus eps, so sqrt(v' + eps) is one pass.
            let eps_t = Tensor::from(eps).f_to_kind(p.kind())?.f_to_device(p.device())?;
            let _ = eps_t.f_addcmul_out(s, g, g)?;
            let _ = slots[0].f_lerp_(s, 1.0 - rho)?;
            let _ = slots[0].f_sqrt_out(s)?;
            let _ = g.f_mul_scalar_(-lr)?;
            let _ = p.f_addcdiv_(g, s)?;
        }
        OptimizerSpec::Adam { lr, beta1, beta2, eps, weight_decay } => {
            add_weight_decay(g, p, weight_decay)?;
            let _ = slots[0].f_lerp_(g, 1.0 - beta1)?;
            let _ = g.f_mul_out(s, g)?;
            let _ = slots[1].f_lerp_(s, 1.0 - beta2)?;
            let _ = slots[1].f_sqrt_out(s)?;
            let _ = s.f_add_scalar_(eps)?;
            let step_size = lr * (1.0 - beta2.powf(t)).sqrt() / (1.0 - beta1.powf(t));
            // The gradient buffer takes -step_size m: it is zeroed before the next backward pass.
            let _ = slots[0].f_mul_scalar_out(g, -step_size)?;
            let _ = p.f_addcdiv_(g, s)?;
        }
    }
    Ok(())
}

/// `g += wd p` (L2), in place.
fn add_weight_decay(g: &mut Tensor, p: &Tensor, weight_decay: f64) -> Result<(), TchError> {
    if weight_decay > 0.0 {
        let _ = g.f_add_(&p.f_mul_scalar(weight_decay)?)?;
    }
    Ok(())
}

impl Optimizer {
    /// `params`: the trainable tensors with their names (the names key the saved state). Their
    /// storage moves into the optimizer's flat buffers, values unchanged.
    pub fn new(spec: OptimizerSpec, mut params: Vec<(String, Tensor)>) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<((Kind, Device), Vec<usize>)> = Vec::new();
        for (i, (_, p)) in params.iter().enumerate() {
            let key = (p.kind(), p.device());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(i),
                None => groups.push((key, vec![i])),
            }
        }
        let mut placed: Vec<Option<Param>> = params.iter().map(|_| None).collect();
        let mut chunks = Vec::new();
        for ((kind, device), members) in groups {
            let total: i64 = members.iter().map(|&i| params[i].1.numel() as i64).sum();
            let flat = |fill: f64| Tensor::full([total], fill, (kind, device));
            let chunk = Chunk {
                params: flat(0.0),
                grads: flat(0.0),
                slots: spec.slots().iter().map(|&(_, init)| flat(init)).collect(),
                scratch: flat(0.0),
                members: members.clone(),
            };
            let mut offset = 0;
            for &i in &members {
                let (name, original) = &params[i];
                let (n, shape) = (original.numel() as i64, original.size());
                let view = |flat: &Tensor| flat.narrow(0, offset, n).view(shape.as_slice());
                let mut tensor = original.shallow_clone();
                let data = view(&chunk.params);
                tch::no_grad(|| {
                    data.shallow_clone().copy_(&tensor);
                    tensor.set_data(&data);
                });
                placed[i] = Some(Param {
                    name: name.clone(),
                    tensor,
                    grad: view(&chunk.grads),
                    slots: chunk.slots.iter().map(view).collect(),
                    scratch: view(&chunk.scratch),
                });
                offset += n;
            }
            chunks.push(chunk);
        }
        let params =
            placed.into_iter().map(|p| p.expect("every parameter belongs to a chunk")).collect();
        Self { spec, params, chunks, steps: 0 }
    }

    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Zeroes the gradients in place: one operation per chunk, plus any not adopted yet.
    pub fn zero_grad(&mut self) {
        for chunk in &mut self.chunks {
            let _ = chunk.grads.f_zero_();
        }
        for p in &mut self.params {
            if !adopted(p) {
                p.tensor.zero_grad();
            }
        }
    }

    /// One update from the gradients accumulated in the parameters.
    pub fn step(&mut self) {
        self.steps += 1;
        let (spec, t) = (self.spec, self.steps as f64);
        // The operands have matching shapes, kinds and devices by construction: this cannot fail.
        let _ = tch::no_grad(|| -> Result<(), TchError> {
            for chunk in &mut self.chunks {
                let mut complete = true;
                for &i in &chunk.members {
                    complete &= adopt(&mut self.params[i])?;
                }
                if complete {
                    update(
                        spec,
                        t,
                        &mut chunk.params,
                        &mut chunk.grads,
                        &mut chunk.slots,
                        &mut chunk.scratch,
                    )?;
                    continue;
                }
                for &i in &chunk.members {
                    let p = &mut self.params[i];
                    if p.tensor.grad().defined() {
                        update(spec, t, &mut p.tensor, &mut p.grad, &mut p.slots, &mut p.scratch)?;
                    }
                }
            }
            Ok(())
        });
    }

    /// The optimizer's tensors, named `optim.<slot>.<param>`, for a checkpoint: RMSprop's
    /// `v_eps` (Keras' `v` plus epsilon), Adam's `m` and `v`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let names = self.spec.slots();
        let mut out = Vec::new();
        for p in &self.params {
            for ((slot_name, _), slot) in names.iter().zip(&p.slots) {
                out.push((format!("optim.{slot_name}.{}", p.name), slot.shallow_clone()));
            }
        }
        out
    }

    /// Restores the slots and the step count saved by [`Optimizer::state_tensors`].
    pub fn load_state(
        &mut self,
        tensors: &[(String, Tensor)],
        steps: i64,
    ) -> Result<(), crate::TrainError> {
        let saved: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, slot) in self.state_tensors() {
            let src = saved.get(name.as_str()).ok_or_else(|| {
                crate::TrainError::Config(format!("checkpoint lacks optimizer tensor {name}"))
            })?;
            if src.size() != slot.size() {
                return Err(crate::TrainError::Config(format!(
                    "optimizer tensor {name} has shape {:?}, expected {:?}",
                    src.size(),
                    slot.size()
                )));
            }
            tch::no_grad(|| slot.shallow_clone().copy_(src));
        }
        self.steps = steps;
        Ok(())
    }
}

/// Whether the parameter's gradient lives in its chunk's gradient buffer.
fn adopted(p: &Param) -> bool {
    let g = p.tensor.grad();
    g.defined() && g.data_ptr() == p.grad.data_ptr()
}

/// Moves the parameter's gradient into its chunk's buffer; false when it has none.
fn adopt(p: &mut Param) -> Result<bool, TchError> {
    let mut g = p.tensor.grad();
    if !g.defined() {
        return Ok(false);
    }
    if g.data_ptr() != p.grad.data_ptr() {
        p.grad.f_copy_(&g)?;
        g.f_set_data(&p.grad)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One scalar parameter, gradient 2p (loss p^2): the update is known in closed form.
    fn run(spec: OptimizerSpec, steps: usize) -> f64 {
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = Optimizer::new(spec, vec![("p".into(), p.shallow_clone())]);
        for _ in 0..steps {
            opt.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            opt.step();
        }
        p.double_value(&[0])
    }

    #[test]
    fn rmsprop_matches_keras_formula() {
        // g = 2, v = 0.1 * 4 = 0.4, p = 1 - 0.01 * 2 / sqrt(0.4 + 1e-7)
        let expect = 1.0 - 0.01 * 2.0 / (0.4f64 + 1e-7).sqrt();
        assert!((run(OptimizerSpec::rmsprop(0.01), 1) - expect).abs() < 1e-6);
        // Second step: g = 2 p1, v = 0.9 * 0.4 + 0.1 g^2.
        let g = 2.0 * expect;
        let v = 0.9 * 0.4 + 0.1 * g * g;
        let expect2 = expect - 0.01 * g / (v + 1e-7f64).sqrt();
        assert!((run(OptimizerSpec::rmsprop(0.01), 2) - expect2).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_is_lr_sized() {
        // Bias-corrected first Adam step moves by lr * g / (|g| + eps') ~= lr.
        assert!((run(OptimizerSpec::adam(0.01), 1) - 0.99).abs() < 1e-5);
    }

    #[test]
    fn both_descend() {
        assert!(run(OptimizerSpec::rmsprop(0.01), 50) < 0.7);
        assert!(run(OptimizerSpec::adam(0.01), 50) < 0.7);
    }

    /// Parameters of several shapes, loss sum(c * p^2) with a per-tensor c: the flat update
    /// must equal the formula applied tensor by tensor, and the gradients must land in (and
    /// accumulate in) the flat buffer.
    #[test]
    fn flat_buffers_hold_params_and_gradients_and_update_like_single_tensors() {
        let shapes: [&[i64]; 3] = [&[2, 3], &[4], &[1, 1, 2, 2]];
        let init: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Tensor::arange(s.iter().product::<i64>(), (Kind::Float, Device::Cpu)).view(*s) * 0.1
                    + i as f64
            })
            .collect();
        let params: Vec<Tensor> = init.iter().map(|t| t.copy().set_requires_grad(true)).collect();
        let handles: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
        let named =
            params.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.shallow_clone())).collect();
        let mut opt = Optimizer::new(OptimizerSpec::rmsprop(0.01), named);
        // The values survived the move into the buffer, and every handle sees the buffer.
        for (h, t) in handles.iter().zip(&init) {
            assert!(h.equal(t));
        }
        assert_eq!(opt.chunks.len(), 1);
        assert_eq!(opt.chunks[0].params.size(), [6 + 4 + 4]);
        let loss = |ps: &[Tensor]| {
            ps.iter()
                .enumerate()
                .map(|(i, p)| (p * p).sum(Kind::Float) * (i + 1) as f64)
                .reduce(|a, b| a + b)
                .unwrap()
        };
        let (mut expect, mut v): (Vec<Tensor>, Vec<Tensor>) = (
            init.iter().map(Tensor::copy).collect(),
            init.iter().map(Tensor::zeros_like).collect(),
        );
        for step in 0..3 {
            opt.zero_grad();
            loss(&handles).backward();
            if step > 0 {
                // Adopted at the first step: autograd accumulated into the flat buffer.
                for p in &opt.params {
                    assert!(adopted(p), "{} gradient outside the buffer at step {step}", p.name);
                }
            }
            // Gradients of this step, before the update consumes them.
            let grads: Vec<Tensor> = handles.iter().map(|h| h.grad().copy()).collect();
            opt.step();
            for (i, g) in grads.iter().enumerate() {
                let want = (&expect[i] * 2.0 * (i + 1) as f64).to_kind(Kind::Double);
                assert!(
                    g.to_kind(Kind::Double).allclose(&want, 1e-6, 1e-6, false),
                    "gradient of p{i} at step {step}"
                );
                let g = g.to_kind(Kind::Double);
                v[i] = &v[i].to_kind(Kind::Double) * 0.9 + &g * &g * 0.1;
                expect[i] = (&expect[i].to_kind(Kind::Double) - &g * 0.01 / (&v[i] + 1e-7).sqrt())
                    .to_kind(Kind::Float);
            }
            for (i, h) in handles.iter().enumerate() {
                assert!(h.allclose(&expect[i], 1e-5, 1e-6, false), "p{i} after step {step}");
            }
        }
        // Two backward passes without zeroing accumulate (in the buffer) as autograd promises.
        opt.zero_grad();
        loss(&handles).backward();
        let once = handles[0].grad().copy();
        loss(&handles).backward();
        assert!(handles[0].grad().allclose(&(once * 2.0), 1e-6, 1e-6, false));
        assert!(adopted(&opt.params[0]));
    }

    #[test]
    fn a_parameter_without_gradient_keeps_its_state_while_the_others_move() {
        let a = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut opt = Optimizer::new(
            OptimizerSpec::rmsprop(0.1),
            vec![("a".into(), a.shallow_clone()), ("b".into(), b.shallow_clone())],
        );
        for _ in 0..2 {
            opt.zero_grad();
            (&a * &a).sum(Kind::Float).backward();
            opt.step();
        }
        assert!(a.double_value(&[0]) < 1.0, "a moves");
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), [1.0, 1.0], "b has no gradient: untouched");
        let state: std::collections::HashMap<String, Tensor> =
            opt.state_tensors().into_iter().collect();
        assert_eq!(
            Vec::<f32>::try_from(&state["optim.v_eps.b"]).unwrap(),
            [1e-7f32; 2],
            "b's slot untouched"
        );
    }

    #[test]
    fn state_round_trips() {
        let p = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut a = Optimizer::new(OptimizerSpec::adam(0.1), vec![("w".into(), p.shallow_clone())]);
        a.zero_grad();
        (&p * &p).sum(Kind::Float).backward();
        a.step();
        let saved: Vec<(String, Tensor)> =
            a.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let q = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut b = Optimizer::new(OptimizerSpec::adam(0.1), vec![("w".into(), q)]);
        b.load_state(&saved, a.steps()).unwrap();
        for ((na, ta), (nb, tb)) in a.state_tensors().iter().zip(b.state_tensors().iter()) {
            assert_eq!(na, nb);
            assert!(ta.equal(tb), "{na}");
        }
        assert_eq!(b.steps(), 1);
        let err = b.load_state(&saved[..1], 1).unwrap_err().to_string();
        assert!(err.contains("optim.v.w"), "{err}");
    }
}
