"""The Triton kernels. Imported only through :func:`backend.triton_kernels`.

Every float operation is written in the order of the reference it reproduces. Launch with
``enable_fp_fusion=False`` (no mul+add contraction into FMA) and divide with ``div_rn``
(Triton's ``/`` on float32 is an approximate division on NVIDIA GPUs).

No calls into triton.language's own jitted helpers (``tl.max``, ``tl.sum``, ``tl.zeros``, ...):
when triton was imported without ``TRITON_INTERPRET=1`` those cannot run in the interpreter,
so reductions go through ``tl.reduce`` with the standard combine functions, which the
interpreter recognises and evaluates with numpy.
"""

from __future__ import annotations

import triton
import triton.language as tl

INT32_MAX = tl.constexpr(2147483647)


@triton.jit
def _max(x):
    return tl.reduce(x, 0, tl.standard._elementwise_max)


@triton.jit
def _min(x):
    return tl.reduce(x, 0, tl.standard._elementwise_min)


# --- S3FD pre-processing ------------------------------------------------------------------------


@triton.jit
def s3fd_preprocess_kernel(frames, out, hw, mean_r, mean_g, mean_b, BLOCK: tl.constexpr):
    """(B, H, W, 3) uint8 BGR -> (B, 3, H, W) RGB minus the means, in out's dtype."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < hw
    src = frames + b * hw * 3 + offs.to(tl.int64) * 3
    blue = tl.load(src, mask=mask, other=0).to(tl.int32)
    green = tl.load(src + 1, mask=mask, other=0).to(tl.int32)
    red = tl.load(src + 2, mask=mask, other=0).to(tl.int32)
    dst = out + b * hw * 3 + offs
    ty = out.dtype.element_ty
    tl.store(dst, (red - mean_r).to(ty), mask=mask)
    tl.store(dst + hw, (green - mean_g).to(ty), mask=mask)
    tl.store(dst + 2 * hw, (blue - mean_b).to(ty), mask=mask)


# --- S3FD post-processing: the best position per image ------------------------------------------


@triton.jit
def _chunk_best(cls, n, b, chunk, offset, BLOCK: tl.constexpr):
    """Largest logit margin c1 - c0 in one block of a level, its first global index, NaN flag."""
    p = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = p < n
    base = cls + b * 2 * n
    c0 = tl.load(base + p, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(base + n + p, mask=mask, other=0.0).to(tl.float32)
    margin = c1 - c0
    top = tl.where(c0 > c1, c0, c1)
    # torch's softmax gives NaN when a logit is NaN or the larger logit is infinite
    bad = mask & ((margin != margin) | (tl.abs(top) == float("inf")))
    key = tl.where(mask & (margin == margin), margin, float("-inf"))
    best = _max(key)
    index = _min(tl.where(key == best, p, INT32_MAX))
    return best, index + offset, _max(bad.to(tl.int32))


@triton.jit
def s3fd_best_kernel(
    c1, c2, c3, c4, c5, c6,
    n1, n2, n3, n4, n5, n6,
    k1, k2, k3, k4, k5,
    part_margin, part_index, part_bad, num_chunks,
    BLOCK: tl.constexpr,
):
    """Per (chunk, image): the best position of one BLOCK of one level (levels' chunks in order)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    o2 = n1
    o3 = o2 + n2
    o4 = o3 + n3
    o5 = o4 + n4
    o6 = o5 + n5
    if pid < k1:
        best, index, bad = _chunk_best(c1, n1, b, pid, 0, BLOCK)
    elif pid < k2:
        best, index, bad = _chunk_best(c2, n2, b, pid - k1, o2, BLOCK)
    elif pid < k3:
        best, index, bad = _chunk_best(c3, n3, b, pid - k2, o3, BLOCK)
    elif pid < k4:
        best, index, bad = _chunk_best(c4, n4, b, pid - k3, o4, BLOCK)
    elif pid < k5:
        best, index, bad = _chunk_best(c5, n5, b, pid - k4, o5, BLOCK)
    else:
        best, index, bad = _chunk_best(c6, n6, b, pid - k5, o6, BLOCK)
    slot = b * num_chunks + pid
    tl.store(part_margin + slot, best)
    tl.store(part_index + slot, index)
    tl.store(part_bad + slot, bad.to(tl.int8))


@triton.jit
def _decode(reg, n, width, pos, b, stride):
    """The reference's SSD decode of one position (float32, its operation order)."""
    h = pos // width
    w = pos % width
    base = reg + b * 4 * n + pos
    dx = tl.load(base).to(tl.float32)
    dy = tl.load(base + n).to(tl.float32)
    dw = tl.load(base + 2 * n).to(tl.float32)
    dh = tl.load(base + 3 * n).to(tl.float32)
    size = tl.full((), stride * 4, tl.float32)
    cx = (w * stride + stride // 2).to(tl.float32) + (dx * 0.1) * size
    cy = (h * stride + stride // 2).to(tl.float32) + (dy * 0.1) * size
    # exp in float64, rounded once: the correctly rounded float32 exp that torch's CPU exp almost always gives
    bw = size * tl.exp((dw * 0.2).to(tl.float64)).to(tl.float32)
    bh = size * tl.exp((dh * 0.2).to(tl.float64)).to(tl.float32)
    x1 = cx - bw * 0.5
    y1 = cy - bh * 0.5
    return x1, y1, bw + x1, bh + y1


@triton.jit
def _truncate_box(v):
    return tl.where(v < 0.0, 0.0, v).to(tl.int64)


@triton.jit
def s3fd_choose_kernel(
    part_margin, part_index, part_bad, num_chunks,
    r1, r2, r3, r4, r5, r6,
    n1, n2, n3, n4, n5, n6,
    w1, w2, w3, w4, w5, w6,
    out_box, out_found, out_bad,
    BLOCK_K: tl.constexpr,
):
    """Per image: reduce the chunk winners (ties -> first position), decode, threshold, truncate."""
    b = tl.program_id(0).to(tl.int64)
    best = tl.full((), float("-inf"), tl.float32)
    index = tl.full((), INT32_MAX, tl.int32)
    bad = tl.full((), 0, tl.int32)
    for start in range(0, num_chunks, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        mask = k < num_chunks
        pm = tl.load(part_margin + b * num_chunks + k, mask=mask, other=float("-inf"))
        pi = tl.load(part_index + b * num_chunks + k, mask=mask, other=INT32_MAX)
        pb = tl.load(part_bad + b * num_chunks + k, mask=mask, other=0).to(tl.int32)
        m = _max(pm)
        i = _min(tl.where(pm == m, pi, INT32_MAX))
        take = (m > best) | ((m == best) & (i < index))
        index = tl.where(take, i, index)
        best = tl.where(take, m, best)
        bad = tl.maximum(bad, _max(pb))
    # softmax score of the winner: 1 / (exp(c0 - c1) + 1) for c1 >= c0, below 0.5 otherwise
    e = tl.exp((-best).to(tl.float64)).to(tl.float32)
    score = tl.math.div_rn(tl.full((), 1.0, tl.float32), e + 1.0)
    found = (best > 0.0) & (score > 0.5)
    x1 = tl.full((), 0.0, tl.float32)
    y1 = tl.full((), 0.0, tl.float32)
    x2 = tl.full((), 0.0, tl.float32)
    y2 = tl.full((), 0.0, tl.float32)
    if found:
        o2 = n1
        o3 = o2 + n2
        o4 = o3 + n3
        o5 = o4 + n4
        o6 = o5 + n5
        if index < o2:
            x1, y1, x2, y2 = _decode(r1, n1, w1, index, b, 4)
        elif index < o3:
            x1, y1, x2, y2 = _decode(r2, n2, w2, index - o2, b, 8)
        elif index < o4:
            x1, y1, x2, y2 = _decode(r3, n3, w3, index - o3, b, 16)
        elif index < o5:
            x1, y1, x2, y2 = _decode(r4, n4, w4, index - o4, b, 32)
        elif index < o6:
            x1, y1, x2, y2 = _decode(r5, n5, w5, index - o5, b, 64)
        else:
            x1, y1, x2, y2 = _decode(r6, n6, w6, index - o6, b, 128)
    tl.store(out_box + b * 4, _truncate_box(x1))
    tl.store(out_box + b * 4 + 1, _truncate_box(y1))
    tl.store(out_box + b * 4 + 2, _truncate_box(x2))
    tl.store(out_box + b * 4 + 3, _truncate_box(y2))
    tl.store(out_found + b, found.to(tl.int8))
    tl.store(out_bad + b, bad.to(tl.int8))


# --- Greedy NMS ---------------------------------------------------------------------------------


@triton.jit
def nms_kernel(boxes, counts, keep, K, threshold, BLOCK_K: tl.constexpr):
    """Greedy NMS over each image's score-sorted boxes, with numpy's float32 arithmetic.

    boxes (B, K, 4) float32 x1, y1, x2, y2 sorted best first; counts (B,) valid rows per image;
    keep (B, K) int8 out. IoU uses the +1 pixel areas; a box is suppressed unless
    IoU <= threshold, so a NaN IoU suppresses, as in numpy.
    """
    b = tl.program_id(0).to(tl.int64)
    count = tl.load(counts + b)
    offs = tl.arange(0, BLOCK_K)
    valid = offs < count
    base = boxes + b * K * 4
    x1 = tl.load(base + offs * 4, mask=valid, other=0.0)
    y1 = tl.load(base + offs * 4 + 1, mask=valid, other=0.0)
    x2 = tl.load(base + offs * 4 + 2, mask=valid, other=0.0)
    y2 = tl.load(base + offs * 4 + 3, mask=valid, other=0.0)
    area = ((x2 - x1) + 1.0) * ((y2 - y1) + 1.0)
    removed = tl.full((BLOCK_K,), 0, tl.int32)
    kept = tl.full((BLOCK_K,), 0, tl.int32)
    for i in range(0, count):
        gone = _max(tl.where(offs == i, removed, 0))
        if gone == 0:
            kept = tl.where(offs == i, 1, kept)
            bx1 = tl.load(base + i * 4)
            by1 = tl.load(base + i * 4 + 1)
            bx2 = tl.load(base + i * 4 + 2)
            by2 = tl.load(base + i * 4 + 3)
            barea = ((bx2 - bx1) + 1.0) * ((by2 - by1) + 1.0)
            xx1 = tl.maximum(x1, bx1, propagate_nan=tl.PropagateNan.ALL)
            yy1 = tl.maximum(y1, by1, propagate_nan=tl.PropagateNan.ALL)
            xx2 = tl.minimum(x2, bx2, propagate_nan=tl.PropagateNan.ALL)
            yy2 = tl.minimum(y2, by2, propagate_nan=tl.PropagateNan.ALL)
            w = (xx2 - xx1) + 1.0
            h = (yy2 - yy1) + 1.0
            w = tl.where(w < 0.0, 0.0, w)
            h = tl.where(h < 0.0, 0.0, h)
            inter = w * h
            overlap = tl.math.div_rn(inter, (barea + area) - inter)
            suppress = (offs > i) & valid & ~(overlap <= threshold)
            removed = tl.where(suppress, 1, removed)
    tl.store(keep + b * K + offs, kept.to(tl.int8), mask=offs < K)


# --- OpenCV INTER_LINEAR (see resize.py for the arithmetic) -------------------------------------


@triton.jit
def _rint(x):
    """Round half to even for 0 <= x < 2**22 (OpenCV's saturate_cast<short>(float))."""
    t = x + 0.5
    r = tl.floor(t)
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    return tl.where((r == t) & odd, r - 1.0, r).to(tl.int32)


@triton.jit
def _taps(d, src, dst, COLUMNS: tl.constexpr):
    """Source indices and 11-bit weights for destination indices d (src, dst: int32 sizes)."""
    inv = dst.to(tl.float64) / src.to(tl.float64)  # float64 division is IEEE (div.rn.f64)
    scale = 1.0 / inv
    f = ((d.to(tl.float64) + 0.5) * scale - 0.5).to(tl.float32)
    s = tl.floor(f)
    f = f - s
    si = s.to(tl.int32)
    last = src - 1
    if COLUMNS:
        edge = (si < 0) | (si >= last)
        f = tl.where(edge, 0.0, f)
        si = tl.where(si < 0, 0, tl.minimum(si, last))
    w0 = _rint((1.0 - f) * 2048.0)
    w1 = _rint(f * 2048.0)
    i0 = tl.minimum(tl.maximum(si, 0), last)
    i1 = tl.minimum(tl.maximum(si + 1, 0), last)
    return i0, i1, w0, w1


@triton.jit
def _vertical(h0, h1, v0, v1):
    t0 = ((h0 >> 4) * v0) >> 16
    t1 = ((h1 >> 4) * v1) >> 16
    return tl.minimum(tl.maximum((t0 + t1 + 2) >> 2, 0), 255)


@triton.jit
def _slice_bound(v, size):
    """A Python slice bound (negative counts from the end), clamped to [0, size]."""
    v = tl.where(v < 0, v + size, v)
    return tl.minimum(tl.maximum(v, 0), size)


@triton.jit
def crop_kernel(
    frames, boxes, lut, faces, face_input, H, W,
    SIZE: tl.constexpr, HALF: tl.constexpr, WRITE_FACES: tl.constexpr, WRITE_INPUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """frame[y1:y2, x1:x2] -> SIZE x SIZE (OpenCV INTER_LINEAR) -> uint8 faces and/or the 6-channel input.

    boxes (B, 4) int64 y1, y2, x1, x2 with numpy slice semantics; an empty crop gives zeros.
    face_input (B, 6, SIZE, SIZE) float32: lut[v] with rows >= HALF of channels 0-2 zeroed.
    """
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    y1 = _slice_bound(tl.load(boxes + b * 4).to(tl.int32), H)
    y2 = _slice_bound(tl.load(boxes + b * 4 + 1).to(tl.int32), H)
    x1 = _slice_bound(tl.load(boxes + b * 4 + 2).to(tl.int32), W)
    x2 = _slice_bound(tl.load(boxes + b * 4 + 3).to(tl.int32), W)
    ok = (y2 > y1) & (x2 > x1)
    src_h = tl.maximum(y2 - y1, 1)
    src_w = tl.maximum(x2 - x1, 1)
    size = tl.full((), SIZE, tl.int32)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    inside = o < SIZE * SIZE
    live = o < tl.where(ok, SIZE * SIZE, 0)  # (vector & scalar masks trip the interpreter)
    oy = o // SIZE
    ox = o % SIZE
    cx0, cx1, a0, a1 = _taps(ox, src_w, size, True)
    ry0, ry1, v0, v1 = _taps(oy, src_h, size, False)
    frame = frames + b * H * W * 3
    row0 = frame + (y1 + ry0).to(tl.int64) * W * 3
    row1 = frame + (y1 + ry1).to(tl.int64) * W * 3
    col0 = (x1 + cx0) * 3
    col1 = (x1 + cx1) * 3
    plane = SIZE * SIZE
    for c in tl.static_range(3):
        p00 = tl.load(row0 + col0 + c, mask=live, other=0).to(tl.int32)
        p01 = tl.load(row0 + col1 + c, mask=live, other=0).to(tl.int32)
        p10 = tl.load(row1 + col0 + c, mask=live, other=0).to(tl.int32)
        p11 = tl.load(row1 + col1 + c, mask=live, other=0).to(tl.int32)
        v = _vertical(p00 * a0 + p01 * a1, p10 * a0 + p11 * a1, v0, v1)
        if WRITE_FACES:
            tl.store(faces + b * plane * 3 + o * 3 + c, v.to(tl.uint8), mask=inside)
        if WRITE_INPUT:
            unit = tl.load(lut + v, mask=inside, other=0.0)
            dst = face_input + b * plane * 6 + o
            tl.store(dst + c * plane, tl.where(oy >= HALF, 0.0, unit), mask=inside)
            tl.store(dst + (3 + c) * plane, unit, mask=inside)


@triton.jit
def mel_chunks_kernel(mel, starts, out, T, N_MELS: tl.constexpr, STEP: tl.constexpr, BLOCK_M: tl.constexpr):
    """out[b, 0, m, j] = mel[m, starts[b] + j] as float32."""
    b = tl.program_id(0).to(tl.int64)
    start = tl.load(starts + b)
    m = tl.arange(0, BLOCK_M)[:, None]
    j = tl.arange(0, STEP)[None, :]
    mask = (m < N_MELS) & (j < STEP)
    values = tl.load(mel + m.to(tl.int64) * T + start + j, mask=mask, other=0.0)
    tl.store(out + b * N_MELS * STEP + m * STEP + j, values.to(tl.float32), mask=mask)


@triton.jit
def _prediction_u8(x):
    """The reference's ``(pred * 255.).astype(uint8)``: float32 product, truncated."""
    v = (x.to(tl.float32) * 255.0).to(tl.int32)
    return tl.minimum(tl.maximum(v, 0), 255)


@triton.jit
def paste_kernel(
    frames, pred, boxes, H, W, feather_div,
    SRC: tl.constexpr, FEATHER: tl.constexpr, BLOCK: tl.constexpr,
):
    """Resize each (3, SRC, SRC) prediction to its box (OpenCV INTER_LINEAR) and write it into frames.

    boxes (B, 4) int64 y1, y2, x1, x2; box pixels outside the frame are dropped. With FEATHER,
    a pixel k pixels from the nearest box edge gets weight min(2k + 1, 2R) / 2R, where the ramp
    R = max(1, min(box h, box w) // feather_div); the rest comes from the frame (rounded half up).
    """
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    y1 = tl.load(boxes + b * 4).to(tl.int32)
    y2 = tl.load(boxes + b * 4 + 1).to(tl.int32)
    x1 = tl.load(boxes + b * 4 + 2).to(tl.int32)
    x2 = tl.load(boxes + b * 4 + 3).to(tl.int32)
    box_h = y2 - y1
    box_w = x2 - x1
    ok = (box_h > 0) & (box_w > 0)
    dst_h = tl.maximum(box_h, 1)
    dst_w = tl.maximum(box_w, 1)
    o = pid * BLOCK + tl.arange(0, BLOCK)
    dy = o // dst_w
    dx = o % dst_w
    fy = y1 + dy
    fx = x1 + dx
    live = (o < tl.where(ok, box_h * box_w, 0)) & (fy >= 0) & (fy < H) & (fx >= 0) & (fx < W)
    src = tl.full((), SRC, tl.int32)
    cx0, cx1, a0, a1 = _taps(dx, src, dst_w, True)
    ry0, ry1, v0, v1 = _taps(dy, src, dst_h, False)
    if FEATHER:
        ramp = tl.maximum(tl.minimum(box_h, box_w) // feather_div, 1)
        edge = tl.minimum(tl.minimum(dy, box_h - 1 - dy), tl.minimum(dx, box_w - 1 - dx))
        weight = tl.minimum(2 * edge + 1, 2 * ramp)
    image = pred + b * 3 * SRC * SRC
    dst = frames + ((b * H + fy) * W + fx) * 3
    for c in tl.static_range(3):
        plane = image + c * SRC * SRC
        p00 = _prediction_u8(tl.load(plane + ry0 * SRC + cx0, mask=live, other=0.0))
        p01 = _prediction_u8(tl.load(plane + ry0 * SRC + cx1, mask=live, other=0.0))
        p10 = _prediction_u8(tl.load(plane + ry1 * SRC + cx0, mask=live, other=0.0))
        p11 = _prediction_u8(tl.load(plane + ry1 * SRC + cx1, mask=live, other=0.0))
        v = _vertical(p00 * a0 + p01 * a1, p10 * a0 + p11 * a1, v0, v1)
        if FEATHER:
            old = tl.load(dst + c, mask=live, other=0).to(tl.int32)
            v = (v * weight + old * (2 * ramp - weight) + ramp) // (2 * ramp)
        tl.store(dst + c, v.to(tl.uint8), mask=live)
