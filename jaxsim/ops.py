"""Small array helpers for the engine's hot path.

XLA:CPU runs a reduction over a short minor axis (4 assets, a handful of maker slots)
several times slower than the same sum written as elementwise adds, and a stable
argsort of a mask slower than a prefix sum; these helpers give the same values (up to
the order of float additions) in the faster form. They are pure jnp and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sum_last(x: Array) -> Array:
    """`x.sum(-1)` as unrolled adds (for a short, static last axis)."""
    out = x[..., 0]
    for j in range(1, x.shape[-1]):
        out = out + x[..., j]
    return out


def sum_leading(x: Array) -> Array:
    """Sum over every axis but the last, by pairwise halving of the flattened rows."""
    y = x.reshape(-1, x.shape[-1])
    while y.shape[0] > 1:
        h = y.shape[0] // 2
        head = y[:h] + y[h : 2 * h]
        y = head if y.shape[0] % 2 == 0 else jnp.concatenate([head, y[2 * h :]])
    return y[0]


def compact(mask: Array) -> tuple[Array, Array]:
    """(order, count): indices of the True entries of `mask` first, in index order, then
    the False ones (as `argsort(~mask, stable=True)`), and how many are True."""
    n = mask.shape[0]
    idx = jnp.arange(n)
    n_true = jnp.sum(mask.astype(jnp.int32))
    rank_t = jnp.cumsum(mask.astype(jnp.int32)) - 1
    rank_f = n_true + jnp.cumsum((~mask).astype(jnp.int32)) - 1
    pos = jnp.where(mask, rank_t, rank_f)
    return jnp.zeros((n,), jnp.int32).at[pos].set(idx.astype(jnp.int32)), n_true


def tie(tree, ref):
    """`tree` with every leaf passed through ``where(r != r, x, x)``, r a scalar of `ref` (of
    its key data for a typed PRNG key):
    the same values bit for bit (both branches are x), but under `vmap` each leaf is batched
    whenever `ref` is (XLA drops the select after batching).

    A trace-time hint for loops: `lax.while_loop` and `lax.scan` find which carry leaves
    are batched by batching their body again until the answer stops changing, so a carry
    that starts unbatched (a counter, zero accumulators) but becomes batched costs one
    more batching of the body, nested loops and all. Tie such a carry to the value the
    loop's predicate (or its body) makes it depend on; a leaf that `ref` would not make
    batched is left as it is.
    """
    if jnp.issubdtype(jnp.result_type(ref), jax.dtypes.prng_key):
        ref = jax.random.key_data(ref)
    r = jnp.ravel(ref)[0]
    never = r != r
    return jax.tree_util.tree_map(lambda x: jnp.where(never, x, x), tree)


def while_loop(cond_fun, body_fun, init, ref):
    """`lax.while_loop(cond_fun, body_fun, init)` whose predicate is batched whenever `ref`
    is (under vmap): the carry is tied to `ref` (`tie`), as the batched predicate batches it
    anyway, so the loop batches its body once instead of once per fixpoint pass. Carry
    leaves the body passes through unchanged (JAX moves them out of the loop and returns
    them as they came in) are handed back untied, so the hint does not batch them for the
    code after the loop."""
    tied = tie(init, ref)
    out = jax.lax.while_loop(cond_fun, body_fun, tied)
    return jax.tree_util.tree_map(lambda o, t, x: x if o is t else o, out, tied, init)


def first_k(mask: Array, k: int) -> tuple[Array, Array]:
    """Indices of the first k True entries of mask (account order) and their validity."""
    order = compact(mask)[0][:k]
    return order, mask[order]


def once(pred, fn, carry):
    """`fn(carry)` if `pred` else `carry`, as a while loop of at most one iteration.

    Under vmap a `lax.cond` with a batched predicate computes both branches and selects;
    a while loop runs only while some env of the batch still needs it, so a batch in
    which no env needs `fn` skips it.
    """

    def body(c):
        return jnp.bool_(False), fn(c[1])

    pred = jnp.asarray(pred)
    return while_loop(lambda c: c[0], body, (pred, carry), pred)[1]


def materialize(*xs):
    """The arrays `xs` unchanged (bit for bit), computed once and stored.

    XLA:CPU fuses a cheap producer into every consumer, so a long chain of per-env scalar
    arithmetic (an order's checks, say) that feeds a book-sized elementwise loop is
    evaluated again for each element of the loop, unless LLVM hoists it out of the loop,
    which some operations prevent. A sort is never fused: passed through one (of two
    equal rows, so the values come back in place), the chain is evaluated once, into its
    own small fusion, and the consumers read the result. Arrays of one dtype share a sort.
    Meant for per-env scalars and short vectors: XLA:CPU's sort is slow per element (a book
    slice of 1,024 values through it made an order ~9x slower).
    Returns a tuple (a single array for a single argument)."""
    xs = [jnp.asarray(x) for x in xs]
    out = [None] * len(xs)
    groups: dict = {}
    for i, x in enumerate(xs):
        groups.setdefault(x.dtype, []).append(i)
    for idx in groups.values():
        flat = jnp.concatenate([jnp.ravel(xs[i]) for i in idx])
        once = jnp.sort(jnp.stack([flat, flat]), axis=0)[0]
        start = 0
        for i in idx:
            n = xs[i].size
            out[i] = once[start : start + n].reshape(xs[i].shape)
            start += n
    return out[0] if len(out) == 1 else tuple(out)
