"""Mixture-of-depths token skipping (K5): Raposo et al. 2024, "Mixture-of-Depths"; per-frame routing
as in VideoLLM-MoD (Wu et al. 2024).

A router scores every token; only the top fraction ``capacity`` of each group goes through the
block, the rest skip it unchanged::

    indices, weights = mod_route(scores, capacity, groups=frame_id, routable=is_vision)
    x_sel = mod_gather(x, indices)                      # [B, K, D]
    out   = mod_scatter(x, block(x_sel), indices, weights)   # x + w * f(x) on kept rows

**Index rows** (``indices [B, K]`` int64) hold kept token positions in stream order, strictly
increasing, then ``-1`` padding. ``mod_gather`` accepts any entries in ``[0, T)`` or ``-1``; the
scatters also need the order (so no row is written twice). With ``validate=True`` (default) bad
entries raise ValueError before anything is written (CPU: free; CUDA: a check kernel and one
device sync, skipped while a CUDA graph is being captured). With ``validate=False`` entries outside
``[0, T)`` are treated as padding, so bad values never touch memory out of bounds.

**Output width K of mod_route** is fixed by, in order: ``max_kept`` if given; else
``ceil(capacity * T)`` (with the rounding rule of :func:`keep_count`) when neither ``groups`` nor
``routable`` is given, which needs no data; else the largest number of tokens any row keeps, which
the op must compute from the data (on CUDA: one device sync; it raises inside CUDA graph capture,
where ``max_kept`` must be passed). Under ``torch.compile`` that last case is a data-dependent size.
"""

from __future__ import annotations

import math

import torch

__all__ = ["mod_route", "mod_gather", "mod_gather_rmsnorm", "mod_scatter", "mod_scatter_", "mod_scatter_output",
           "mod_scatter_output_", "keep_count"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def keep_count(capacity: float, n: int) -> int:
    """Tokens kept out of ``n`` routable ones: ``ceil(capacity * n)``, except that a product within
    ``1e-9 * n`` above an integer counts as that integer (``0.55 * 100`` is 55.00000000000001 in
    binary floating point and keeps 55, not 56); in ``[0, n]``.
    The kernels use the same double-precision expression."""
    k = math.ceil(float(capacity) * n - 1e-9 * n)
    return min(max(k, 0), n)


def mod_route(scores: torch.Tensor, capacity: float, *, groups: torch.Tensor | None = None,
              routable: torch.Tensor | None = None, max_kept: int | None = None,
              validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick the tokens a MoD block computes.

    Args:
        scores: ``[B, T]`` router logits, float32 / float16 / bfloat16, contiguous.
        capacity: in ``[0, 1]``; each group keeps ``keep_count(capacity, n)`` of its ``n``
            routable tokens, those with the highest scores, ties broken by the lower index
            (-0.0 ties with +0.0; NaN ranks below -inf).
        groups: ``[B, T]`` int64/int32 group id of each token (e.g. its frame), or None for one
            group per row. A group is a run of routable tokens with equal id in stream order;
            non-routable tokens in between neither join nor break it, and their ids are ignored.
            With ``validate=True`` the ids of routable tokens must be non-decreasing along each row
            (then a group is exactly "all routable tokens with that id"); otherwise a decrease just
            starts a new run.
        routable: ``[B, T]`` bool, or None for all tokens; ``False`` tokens (e.g. text) are
            always kept with weight 1.
        max_kept: the output width K (see the module docstring). A row that keeps more raises
            with ``validate=True``, else is cut to its first K kept tokens in stream order.
        validate: see above (on CUDA the group-order and max_kept checks share the one sync that
            sizing K needs, or cost one when K is static; skipped while capturing).

    Returns:
        ``indices [B, K]`` int64, kept positions ascending, ``-1`` padding;
        ``weights [B, K]`` in scores' dtype: ``sigmoid(score)`` for kept routable tokens, 1 for
        non-routable ones, 0 for padding. ``weights`` is differentiable w.r.t. ``scores``
        (``sigmoid'``), which is how the router learns.
    """
    return torch.ops.flashstream.mod_route.default(scores, float(capacity), groups, routable,
                                                   None if max_kept is None else int(max_kept), bool(validate))


def mod_gather(x: torch.Tensor, indices: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """``x [B, T, D]`` -> ``x_sel [B, K, D]``, ``x_sel[b, k] = x[b, indices[b, k]]``, zero rows for
    ``-1``. Differentiable w.r.t. ``x`` (the backward is a scatter)."""
    return torch.ops.flashstream.mod_gather.default(x, indices, bool(validate))


def mod_gather_rmsnorm(x: torch.Tensor, indices: torch.Tensor, norm_weight: torch.Tensor, eps: float = 1e-6, *,
                       validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mod_gather` with a pre-norm block's RMSNorm fused into it, reading each row once:
    returns ``(x_sel, normed)``, ``normed = x_sel * rsqrt(mean(x_sel^2, -1) + eps) * norm_weight``
    (fp32 math; padding rows zero in both). ``norm_weight [D]`` has x's dtype. Differentiable
    w.r.t. ``x`` and ``norm_weight``."""
    return torch.ops.flashstream.mod_gather_rmsnorm.default(x, indices, norm_weight, float(eps), bool(validate))


def mod_scatter(x: torch.Tensor, delta: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None,
                *, validate: bool = True) -> torch.Tensor:
    """The residual add of a MoD block, fused with the scatter: ``out = x`` and, for each kept
    token, ``out[b, indices[b, k]] = x[...] + weights[b, k] * delta[b, k]`` (weight 1 when
    ``weights`` is None), in fp32 with one rounding to x's dtype (the product and
    the sum may be fused into one fma where the CPU or GPU has it). Skipped tokens come out bit-identical to x.
    ``delta [B, K, D]`` and ``weights [B, K]`` have x's dtype. Differentiable w.r.t. ``x``,
    ``delta`` and ``weights``."""
    return torch.ops.flashstream.mod_scatter.default(x, delta, indices, weights, bool(validate))


def mod_scatter_(x: torch.Tensor, delta: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None,
                 *, validate: bool = True) -> torch.Tensor:
    """In-place :func:`mod_scatter`: updates only the kept rows of ``x`` and returns it. If it
    raises, ``x`` is unchanged. Not differentiable (use :func:`mod_scatter` for training)."""
    torch.ops.flashstream.mod_scatter_.default(x, delta, indices, weights, bool(validate))
    return x


def mod_scatter_output(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None,
                       *, validate: bool = True) -> torch.Tensor:
    """:func:`mod_scatter` for a block that returns its output ``y = x_sel + f(x_sel)`` (residual
    included, as Hugging Face decoder layers do) rather than its delta: kept rows get
    ``x + w * (y - x)`` = ``x + w * f(x)``, in one pass and without scaling the residual by the
    router weight (the bug of a peer that multiplies the whole layer output by it). Skipped tokens
    come out bit-identical to x. Differentiable w.r.t. ``x``, ``y`` and ``weights``."""
    return torch.ops.flashstream.mod_scatter_output.default(x, y, indices, weights, bool(validate))


def mod_scatter_output_(x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None,
                        *, validate: bool = True) -> torch.Tensor:
    """In-place :func:`mod_scatter_output`; returns ``x``, unchanged if it raises. Not differentiable."""
    torch.ops.flashstream.mod_scatter_output_.default(x, y, indices, weights, bool(validate))
    return x


# ---- fake kernels: shapes for torch.compile / meta tensors, with the checks knowable without data

def _check_x(op, x):
    torch._check(x.dtype in _FLOAT_DTYPES, lambda: f"flashstream.{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    torch._check(x.dim() == 3, lambda: f"flashstream.{op}: x must be [B, T, D], got {list(x.shape)}")


def _check_indices(op, indices, x):
    torch._check(indices.dtype == torch.int64, lambda: f"flashstream.{op}: indices must be int64, got {indices.dtype}")
    torch._check(indices.dim() == 2 and indices.shape[0] == x.shape[0],
                 lambda: f"flashstream.{op}: indices must be [B, K] with B = {x.shape[0]}, got {list(indices.shape)}")


@torch.library.register_fake("flashstream::mod_route")
def _mod_route_fake(scores, capacity, groups=None, routable=None, max_kept=None, validate=True):
    torch._check(scores.dtype in _FLOAT_DTYPES,
                 lambda: f"flashstream.mod_route: scores must be float32, float16 or bfloat16, got {scores.dtype}")
    torch._check(scores.dim() == 2, lambda: f"flashstream.mod_route: scores must be [B, T], got {list(scores.shape)}")
    torch._check(0.0 <= capacity <= 1.0, lambda: f"flashstream.mod_route: capacity must be in [0, 1], got {capacity}")
    B, T = scores.shape
    if max_kept is not None:
        K = max_kept
    elif groups is None and routable is None and isinstance(T, int):
        K = keep_count(capacity, T)
    else:
        K = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty((B, K), dtype=torch.int64), scores.new_empty((B, K))


@torch.library.register_fake("flashstream::mod_gather")
def _mod_gather_fake(x, indices, validate=True):
    _check_x("mod_gather", x)
    _check_indices("mod_gather", indices, x)
    return x.new_empty((x.shape[0], indices.shape[1], x.shape[2]))


@torch.library.register_fake("flashstream::mod_gather_rmsnorm")
def _mod_gather_rmsnorm_fake(x, indices, norm_weight, eps=1e-6, validate=True):
    _check_x("mod_gather_rmsnorm", x)
    _check_indices("mod_gather_rmsnorm", indices, x)
    shape = (x.shape[0], indices.shape[1], x.shape[2])
    return x.new_empty(shape), x.new_empty(shape)


@torch.library.register_fake("flashstream::mod_scatter")
def _mod_scatter_fake(x, delta, indices, weights=None, validate=True):
    _check_x("mod_scatter", x)
    _check_indices("mod_scatter", indices, x)
    return torch.empty_like(x)


@torch.library.register_fake("flashstream::mod_scatter_")
def _mod_scatter_inplace_fake(x, delta, indices, weights=None, validate=True):
    _check_x("mod_scatter_", x)
    _check_indices("mod_scatter_", indices, x)


@torch.library.register_fake("flashstream::mod_scatter_output")
def _mod_scatter_output_fake(x, y, indices, weights=None, validate=True):
    _check_x("mod_scatter_output", x)
    _check_indices("mod_scatter_output", indices, x)
    return torch.empty_like(x)


@torch.library.register_fake("flashstream::mod_scatter_output_")
def _mod_scatter_output_inplace_fake(x, y, indices, weights=None, validate=True):
    _check_x("mod_scatter_output_", x)
    _check_indices("mod_scatter_output_", indices, x)


# ---- autograd: gather and scatter are each other's backward ---------------------------------------

def _route_setup(ctx, inputs, output):
    scores, _capacity, _groups, routable, _max_kept, _validate = inputs
    indices, _weights = output
    ctx.save_for_backward(scores, routable, indices)


def _route_backward(ctx, grad_indices, grad_weights):
    scores, routable, indices = ctx.saved_tensors
    if grad_weights is None:
        return None, None, None, None, None, None
    valid = indices >= 0
    safe = indices.clamp(min=0)
    s = torch.sigmoid(scores.float().gather(1, safe))
    live = valid if routable is None else valid & routable.gather(1, safe)
    contrib = torch.where(live, grad_weights.float() * s * (1.0 - s), 0.0)
    grad = torch.zeros(scores.shape, dtype=torch.float32, device=scores.device).scatter_add_(1, safe, contrib)
    return grad.to(scores.dtype), None, None, None, None, None


torch.library.register_autograd("flashstream::mod_route", _route_backward, setup_context=_route_setup)


def _gather_setup(ctx, inputs, output):
    x, indices, _validate = inputs
    ctx.save_for_backward(indices)
    ctx.x_shape, ctx.x_dtype, ctx.x_device = x.shape, x.dtype, x.device


def _gather_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    like = torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=ctx.x_device)
    return torch.ops.flashstream.mod_scatter.default(like, grad.contiguous(), indices, None, False), None, None


torch.library.register_autograd("flashstream::mod_gather", _gather_backward, setup_context=_gather_setup)


def _gather_rmsnorm_setup(ctx, inputs, output):
    x, indices, norm_weight, eps, _validate = inputs
    x_sel, _normed = output
    ctx.save_for_backward(indices, norm_weight, x_sel)
    ctx.eps = eps
    ctx.x_shape, ctx.x_dtype, ctx.x_device = x.shape, x.dtype, x.device


def _gather_rmsnorm_backward(ctx, grad_sel, grad_normed):
    indices, norm_weight, x_sel = ctx.saved_tensors
    xs = x_sel.float()
    total = torch.zeros_like(xs) if grad_sel is None else grad_sel.float()
    grad_w = None
    if grad_normed is not None:
        r = torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + ctx.eps)
        gw = grad_normed.float() * norm_weight.float()
        total = total + r * gw - xs * r.pow(3) * (gw * xs).mean(-1, keepdim=True)
        if ctx.needs_input_grad[2]:
            grad_w = (grad_normed.float() * xs * r).sum((0, 1)).to(norm_weight.dtype)
    like = torch.zeros(ctx.x_shape, dtype=ctx.x_dtype, device=ctx.x_device)
    grad_x = torch.ops.flashstream.mod_scatter.default(like, total.to(ctx.x_dtype).contiguous(), indices, None, False)
    return grad_x, None, grad_w, None, None


torch.library.register_autograd("flashstream::mod_gather_rmsnorm", _gather_rmsnorm_backward,
                                setup_context=_gather_rmsnorm_setup)


def _scatter_setup(ctx, inputs, output):
    _x, delta, indices, weights, _validate = inputs
    ctx.save_for_backward(delta, indices, weights)


def _scatter_backward(ctx, grad):
    delta, indices, weights = ctx.saved_tensors
    grad_delta = grad_weights = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
        g_sel = torch.ops.flashstream.mod_gather.default(grad.contiguous(), indices, False)
        if ctx.needs_input_grad[1]:
            grad_delta = g_sel if weights is None else g_sel * weights.unsqueeze(-1)
        if ctx.needs_input_grad[3]:
            grad_weights = (g_sel.float() * delta.float()).sum(-1).to(weights.dtype)
    return grad, grad_delta, None, grad_weights, None


torch.library.register_autograd("flashstream::mod_scatter", _scatter_backward, setup_context=_scatter_setup)


def _scatter_output_setup(ctx, inputs, output):
    x, y, indices, weights, _validate = inputs
    ctx.save_for_backward(x, y, indices, weights)


def _scatter_output_backward(ctx, grad):
    # out = x + w * (y - x) on kept rows: d/dx = 1 - w there (1 elsewhere), d/dy = w, d/dw = <g, y - x>.
    x, y, indices, weights = ctx.saved_tensors
    grad = grad.contiguous()
    g_sel = torch.ops.flashstream.mod_gather.default(grad, indices, False)
    grad_x = grad_y = grad_weights = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.flashstream.mod_scatter_output.default(grad, torch.zeros_like(g_sel), indices, weights, False)
    if ctx.needs_input_grad[1]:
        grad_y = g_sel if weights is None else g_sel * weights.unsqueeze(-1)
    if ctx.needs_input_grad[3]:
        x_sel = torch.ops.flashstream.mod_gather.default(x, indices, False)
        grad_weights = (g_sel.float() * (y.float() - x_sel.float())).sum(-1).to(weights.dtype)
    return grad_x, grad_y, None, grad_weights, None


torch.library.register_autograd("flashstream::mod_scatter_output", _scatter_output_backward,
                                setup_context=_scatter_output_setup)
