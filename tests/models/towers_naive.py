"""Naive float64 re-implementation of the native towers, written from spec 02 for the tower tests:
explicit per-sample / per-head loops, explicit softmax, LayerNorm from mean/variance, patch
embedding from pixel slices. It reads parameters from a state dict (``p``) only."""

import math

import torch

ACTS = {
    "gelu": lambda x: 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "quick_gelu": lambda x: x * (1.0 / (1.0 + torch.exp(-1.702 * x))),
}


def params64(module: torch.nn.Module) -> dict:
    return {k: v.detach().double() for k, v in module.state_dict().items()}


def layer_norm(x, p, name, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]


def softmax(s):
    s = s - s.max(-1, keepdim=True).values
    e = torch.exp(s)
    return e / e.sum(-1, keepdim=True)


def attention(x, p, pre, heads, mask, opt, eps):
    """x [L, C] of one sample; mask [H, L, L] additive or None."""
    length, width = x.shape
    hd = width // heads
    qkv = x @ p[pre + "in_proj_weight"].T + p[pre + "in_proj_bias"]
    q, k, v = qkv[:, :width], qkv[:, width : 2 * width], qkv[:, 2 * width :]
    outs = []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        qh, kh, vh = q[:, cols], k[:, cols], v[:, cols]
        if opt.get("scaled_cosine_attn"):
            qn = qh / qh.norm(dim=-1, keepdim=True)
            kn = kh / kh.norm(dim=-1, keepdim=True)
            scale = math.exp(min(p[pre + "logit_scale"][h].item(), math.log(100.0)))
            s = (qn @ kn.T) * scale
        else:
            if opt.get("qk_norm"):
                qh = layer_norm(qh, p, pre + "ln_q", eps)
                kh = layer_norm(kh, p, pre + "ln_k", eps)
            s = (qh @ kh.T) / math.sqrt(hd)
        if mask is not None:
            s = s + mask[h]
        o = softmax(s) @ vh
        if opt.get("scale_heads"):
            o = o * p[pre + "head_scale"][h].item()
        outs.append(o)
    o = torch.cat(outs, dim=-1)
    if opt.get("scale_attn_inner"):
        o = layer_norm(o, p, pre + "ln_inner", eps)
    return o @ p[pre + "out_proj.weight"].T + p[pre + "out_proj.bias"]


def block(x, p, pre, heads, mask, opt, act, eps):
    a = attention(layer_norm(x, p, pre + "ln_1", eps), p, pre + "attn.", heads, mask, opt, eps)
    if opt.get("scale_attn"):
        a = layer_norm(a, p, pre + "ln_attn", eps)
    if pre + "ls_1.gamma" in p:
        a = a * p[pre + "ls_1.gamma"]
    x = x + a
    h = layer_norm(x, p, pre + "ln_2", eps) @ p[pre + "mlp.c_fc.weight"].T + p[pre + "mlp.c_fc.bias"]
    h = ACTS[act](h)
    if opt.get("scale_fc"):
        h = layer_norm(h, p, pre + "mlp.ln", eps)
    m = h @ p[pre + "mlp.c_proj.weight"].T + p[pre + "mlp.c_proj.bias"]
    if pre + "ls_2.gamma" in p:
        m = m * p[pre + "ls_2.gamma"]
    return x + m


def run_blocks(x, p, pre, layers, heads, mask, opt, act, eps):
    for i in range(layers):
        x = block(x, p, f"{pre}transformer.resblocks.{i}.", heads, mask, opt, act, eps)
    return x


def vit(images, p, cfg, keep=None):
    """images [B, 3, H, W] -> pooled [B, E] (and tokens); ``keep[b]`` = kept patch indices."""
    ph, pw = cfg["patch"]
    heads, layers, eps, act = cfg["heads"], cfg["layers"], cfg.get("eps", 1e-5), cfg.get("act", "gelu")
    conv = p["conv1.weight"]  # [W, 3, ph, pw]
    width = conv.shape[0]
    pooled_all, tokens_all = [], []
    for b, img in enumerate(images.double()):
        gh, gw = img.shape[1] // ph, img.shape[2] // pw
        toks = []
        for r in range(gh):
            for c in range(gw):
                patch = img[:, r * ph : (r + 1) * ph, c * pw : (c + 1) * pw]
                toks.append(conv.reshape(width, -1) @ patch.reshape(-1))
        x = torch.cat([p["class_embedding"][None], torch.stack(toks)]) + p["positional_embedding"]
        if keep is not None:
            x = torch.cat([x[:1], x[1:][keep[b]]])
        if not cfg.get("no_ln_pre"):
            x = layer_norm(x, p, "ln_pre", eps)
        x = run_blocks(x, p, "", layers, heads, None, cfg.get("opt", {}), act, eps)
        pool = cfg.get("pool", "tok")
        if cfg.get("final_ln_after_pool"):
            pooled = x[0] if pool == "tok" else (x[1:].mean(0) if pool == "avg" else x)
            pooled = layer_norm(pooled, p, "ln_post", eps)
            tokens = x if pool == "none" else x[1:]
        else:
            x = layer_norm(x, p, "ln_post", eps)
            pooled = x[0] if pool == "tok" else (x[1:].mean(0) if pool == "avg" else x)
            tokens = x if pool == "none" else x[1:]
        pooled_all.append(pooled @ p["proj"])
        tokens_all.append(tokens)
    return torch.stack(pooled_all), torch.stack(tokens_all)


def text(tokens, p, cfg):
    """tokens [B, L] -> pooled [B, E] (or [B, L, E] for pool 'none') and tokens."""
    heads, layers, eps, act = cfg["heads"], cfg["layers"], cfg.get("eps", 1e-5), cfg.get("act", "gelu")
    pad_id = cfg.get("pad_id", 0)
    outs, toks_out = [], []
    for t in tokens:
        x = p["token_embedding.weight"][t]
        length = t.shape[0]
        if "cls_emb" in p:
            x = torch.cat([x, p["cls_emb"][None]])
        n = x.shape[0]
        x = x + p["positional_embedding"][:n]
        mask = torch.zeros(n, n, dtype=torch.float64)
        if cfg.get("causal", True):
            for i in range(n):
                for j in range(i + 1, n):
                    mask[i, j] = float("-inf")
        if "cls_emb" in p:
            # legacy CoCa mask: key 0 always valid, key j >= 1 valid iff t[j-1] != pad
            for j in range(1, n):
                if t[j - 1] == pad_id:
                    mask[:, j] = float("-inf")
        x = run_blocks(x, p, "", layers, heads, mask[None].expand(heads, n, n), cfg.get("opt", {}), act, eps)
        if "cls_emb" in p:
            pooled = layer_norm(x[-1], p, "ln_final", eps)
            toks = x[:-1]
        else:
            x = layer_norm(x, p, "ln_final", eps)
            pool = cfg.get("pool", "argmax")
            if pool == "first":
                pooled = x[0]
            elif pool == "last":
                pooled = x[length - 1]
            elif pool == "argmax":
                pooled = x[max(range(length), key=lambda j: (t[j].item(), -j))]
            elif pool == "eos":
                hits = [j for j in range(length) if t[j].item() == cfg["eos_id"]]
                pooled = x[hits[0] if hits else 0]
            else:
                pooled = x
            toks = x
        if "text_projection.weight" in p:
            pooled = pooled @ p["text_projection.weight"].T + p["text_projection.bias"]
        elif "text_projection" in p:
            pooled = pooled @ p["text_projection"]
        outs.append(pooled)
        toks_out.append(toks)
    return torch.stack(outs), torch.stack(toks_out)
