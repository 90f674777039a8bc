//! Named trainable tensors ([`Param`]) and the gradients of one backward pass ([`Grads`]),
//! shared by every training recipe.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// A named trainable tensor: a candle [`Var`] (gradients are tracked through it) and PyTorch's
/// `requires_grad` flag. When `requires_grad` is false the owning module reads the variable
/// detached, so it never receives a gradient.
///
/// Cloning shares the variable (as PyTorch's parameter objects are shared).
#[derive(Debug, Clone)]
pub struct Param {
    name: String,
    var: Var,
    requires_grad: bool,
}

impl Param {
    /// A parameter named `name` (its state-dict name) over `var`.
    pub fn new(name: impl Into<String>, var: Var, requires_grad: bool) -> Self {
        Self { name: name.into(), var, requires_grad }
    }

    /// The state-dict name, e.g. `mlp.0.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The variable.
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// Whether the parameter is trained (PyTorch's `requires_grad`).
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }

    /// Sets whether the parameter is trained; a frozen one is read detached.
    pub fn set_requires_grad(&mut self, requires_grad: bool) {
        self.requires_grad = requires_grad;
    }

    /// The tensor a forward pass should use: the variable itself (gradient tracked) when
    /// `requires_grad`, else a detached view of it.
    pub fn value(&self) -> Tensor {
        if self.requires_grad {
            self.var.as_tensor().clone()
        } else {
            self.var.as_detached_tensor()
        }
    }

    /// A detached copy of the current value (later updates of the variable do not change it).
    pub fn snapshot(&self) -> candle_core::Result<Tensor> {
        self.var.as_detached_tensor().copy()
    }
}

/// Overwrites every parameter of `params` in place from `tensors` (`load_state_dict(strict=True)`):
/// an extra, missing or misshapen tensor is an error naming it (and both shapes); values are
/// converted to each parameter's dtype and device.
pub(crate) fn load_params<'a>(
    params: &[Param],
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    what: &str,
) -> crate::Result<()> {
    use crate::Error;
    let tensors: std::collections::HashMap<&str, &Tensor> = tensors.into_iter().collect();
    if let Some(extra) = tensors.keys().find(|k| !params.iter().any(|p| p.name() == **k)) {
        return Err(Error::arg("state_dict", format!("unexpected tensor `{extra}` for {what}")));
    }
    for p in params {
        let t =
            tensors.get(p.name()).ok_or_else(|| Error::arg("state_dict", format!("missing tensor `{}`", p.name())))?;
        let v = p.var();
        if t.dims() != v.dims() {
            return Err(Error::arg(
                "state_dict",
                format!("`{}` has shape {:?}, expected {:?}", p.name(), t.dims(), v.dims()),
            ));
        }
        v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?.copy()?)?;
    }
    Ok(())
}

/// The gradients of named parameters, in parameter order; a parameter without gradient is
/// absent (PyTorch's `p.grad is None`).
#[derive(Debug, Clone, Default)]
pub struct Grads {
    entries: Vec<(String, Tensor)>,
}

impl Grads {
    /// An empty set of gradients.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gradients `loss.backward()` gave to `params`: those with `requires_grad` that the loss
    /// depends on, in the order of `params`.
    pub fn from_backward(params: &[Param], store: &GradStore) -> Self {
        let entries = params
            .iter()
            .filter(|p| p.requires_grad)
            .filter_map(|p| store.get(p.var.as_tensor()).map(|g| (p.name.clone(), g.detach())))
            .collect();
        Self { entries }
    }

    /// The gradient of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, g)| g)
    }

    /// Sets the gradient of `name` (replacing it, or appending a new entry).
    pub fn insert(&mut self, name: impl Into<String>, grad: Tensor) {
        let name = name.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = grad,
            None => self.entries.push((name, grad)),
        }
    }

    /// Removes the gradient of `name` (PyTorch's `p.grad = None`).
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let i = self.entries.iter().position(|(n, _)| n == name)?;
        Some(self.entries.remove(i).1)
    }

    /// Keeps only the entries for which `keep(name)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|(n, _)| keep(n));
    }

    /// `(name, gradient)` pairs, in parameter order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, g)| (n.as_str(), g))
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Tensor)> {
        self.entries.iter_mut().map(|(n, g)| (n.as_str(), g))
    }

    /// The names of the parameters that have a gradient, in parameter order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Number of parameters that have a gradient.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
