"""Vision towers (``vramplan.arch.vision``, ``vramplan.analytic.vision``): image tokens per image,
tower parameters and the image terms, each worked out by hand (no torch)."""

from __future__ import annotations

import pytest

from vramplan.analytic import vision as av
from vramplan.arch import resolve
from vramplan.arch.vision import smart_resize
from vramplan.scenario import Scenario, ScenarioError


def test_qwen25_image_tokens():
    v = resolve("Qwen2.5-VL-7B-Instruct").vision
    # 1024×1024: factor 28, round(1024/28) = 37 -> 1036×1036 = 1,073,296 px (within 3136..12845056)
    # -> 74×74 = 5476 patches of 14 px -> 5476 / 2² = 1369 tokens
    assert v.image(1024, 1024) == (5476, 1369, 1369)
    # 100×100: round(100/28) = 4 -> 112×112 = 12,544 px >= 3136 -> 8×8 = 64 patches -> 16 tokens
    assert v.image(100, 100) == (64, 16, 16)
    # 4000×3000 (W×H): H: round(3000/28) = 107 -> 2996, W: round(4000/28) = 143 -> 4004;
    # 2996·4004 = 11,995,984 <= 12,845,056: kept -> 214×286 = 61,204 patches -> 15,301 tokens
    assert v.image(4000, 3000) == (61204, 15301, 15301)


def test_smart_resize_shrinks_above_max_pixels():
    # 5000×5000 at factor 28: round(5000/28)·28 = 4984, 4984² > 12,845,056 -> beta = sqrt(25e6 /
    # 12,845,056) = 1.3950892857142858, 5000 / beta / 28 = 127.99999999999999 in floating point (as
    # transformers computes it) -> floor 127 -> 3556 per side
    h, w = smart_resize(5000, 5000, 28, 3136, 12845056)
    assert (h, w) == (127 * 28, 127 * 28) and h * w <= 12845056


def test_qwen3_image_tokens():
    v = resolve("Qwen3-VL-8B-Instruct").vision
    # 1024×1024: factor 16·2 = 32, 1024 = 32·32 -> 1024² = 1,048,576 px (within 65536..16777216)
    # -> 64×64 = 4096 patches -> 1024 tokens
    assert v.image(1024, 1024) == (4096, 1024, 1024)
    # 100×100: round(100/32) = 3 -> 96×96 = 9216 < 65536 -> beta = sqrt(65536/10000) = 2.56,
    # ceil(100·2.56/32) = ceil(8.0) = 8 -> 256×256 -> 16×16 = 256 patches -> 64 tokens
    assert v.image(100, 100) == (256, 64, 64)


def test_pixtral_image_tokens():
    v = resolve("Mistral-Small-3.1-24B-Instruct-2503").vision
    # 1024×1024 (<= 1540: no resize), P = 14·2 = 28: ceil(1024/28) = 37 per side -> 74×74 patches,
    # 37·37 = 1369 features, 37·(37 + 1) = 1406 tokens ([IMG_BREAK] per row, [IMG_END] last)
    assert v.image(1024, 1024) == (5476, 1369, 1406)
    # 2000×1000: ratio 2000/1540 -> W = floor(2000/1.2987...) = 1540, H = floor(1000/1.2987...) = 770;
    # ceil(1540/28) = 55, ceil(770/28) = 28 -> 56×110 patches, 28·55 = 1540 features, 28·56 = 1568 tokens
    assert v.image(2000, 1000) == (6160, 1540, 1568)


def test_tower_params_by_hand():
    v = resolve("Qwen2.5-VL-7B-Instruct").vision
    H, I, D, M, out = 1280, 3420, 32, 5120, 3584
    blocks = D * ((H * 3 * H + 3 * H) + (H * H + H) + 2 * (H * I + I) + (I * H + H) + 2 * H)
    merger = (M * M + M) + (M * out + out) + H
    patch = H * 3 * 2 * 14 * 14
    assert v.total_params == blocks + merger + patch == 676_550_144
    m = resolve("Mistral-Small-3.1-24B-Instruct-2503")
    # published 24,011,361,280 parameters; transformers 5.24 ties lm_head (Mistral3Config default, the
    # config.json omits it): 24,011,361,280 - 131072·5120 = 23,340,272,640
    assert m.tie_embeddings and m.all_params == 24_011_361_280 - 131072 * 5120
    # Qwen3-VL-30B-A3B: the checkpoint's safetensors hold 31,070,754,032 parameters
    assert resolve("Qwen3-VL-30B-A3B-Instruct").all_params == 31_070_754_032


def test_pixel_bytes_and_saved_by_hand():
    a = resolve("Qwen2.5-VL-7B-Instruct")
    s = Scenario(images=2, image_size="1024x1024", seq=4096)
    # pixel_values: 2 · 5476 patches · (3·2·14·14 = 1176) · 4 B = 51,518,208 -> 51,518,464 in 512 B
    # blocks; image_grid_thw 2·3·8 = 48 -> 512; mm_token_type_ids 4096·8 = 32,768
    assert av.pixel_bytes(a.vision, s) == 51_518_464 + 512 + 32_768
    # saved under checkpointing (a = 2, bf16 autocast; w = 4, fp32 weights): P = 10,952, F = 2738
    P, F, H, D, M = 10952, 2738, 1280, 32, 5120
    blk = lambda n: -(-n // 512) * 512  # noqa: E731
    per = ((1 + D) * blk(P * H * 2) + 2 * blk(4 * P * 80) + blk(4 * P * H) + blk(4 * P) + blk(F * M * 2))
    step = blk(2 * M * M) + blk(2 * M) + blk(2 * 3584 * M) + blk(2 * 3584)
    assert av.tower_saved_bytes(a, s, 2, 4, 4) == (per, step)
    # 33 · 28,037,120 + 2 · 3,504,640 + 56,074,240 + 44,032 + 28,037,120 = 1,016,389,632 (~0.95 GiB)
    assert per == 1_016_389_632
    assert av.tower_saved_bytes(a, s.replace(grad_checkpointing=False), 2, 4, 4) == (0, 0)


def test_image_fields_default_and_checks():
    s = Scenario()
    assert (s.images, s.image_size, s.vision.value) == (0, "1024x1024", "frozen")
    assert Scenario(image_size="640X480").image_wh == (640, 480)
    with pytest.raises(ScenarioError):
        Scenario(image_size="640")
    with pytest.raises(ScenarioError):
        Scenario(images=-1)


def test_text_model_has_no_tower():
    a = resolve("Qwen3-8B")
    assert a.vision is None and a.all_params == a.total_params


def test_siglip_saved_by_hand():
    """Gemma 3's SigLIP under checkpointing (``vision._siglip_saved``): gemma-3-4b-it, one 896×896 image,
    bf16 autocast (a = 2) over fp32 tower weights (w = 4, the k-bit preparation's upcast)."""
    a = resolve("gemma-3-4b-it")
    s = Scenario(images=1, image_size="896x896", seq=2048, grad_checkpointing=True)
    assert a.vision.image(896, 896) == (4096, 256, 260)
    # P·D = 4096·1152 = 4,718,592 elements. Per image: the patch output in bf16 (9,437,184); 27 encoder
    # layer inputs, post_layernorm's input and the avg-pool's contiguous input in fp32 (29 · 18,874,368
    # = 547,356,672); post_layernorm's mean and rstd (2 · 4·4096 = 32,768); the RMSNorm's pooled input
    # 4·256·1152 = 1,179,648 and its rsqrt 4·256 = 1024 (two 512 B blocks)
    per = 9_437_184 + 547_356_672 + 32_768 + 1_179_648 + 1024
    assert per == 558_007_296
    # per step: 1 + weight (4·1152 = 4608) and the bf16 copy of mm_input_projection_weight
    # (2·1152·2560 = 5,898,240)
    step = 4608 + 5_898_240
    assert av.tower_saved_bytes(a, s, 2, 4, 4) == (per, step)
    # a quantized tower: its encoder linears are bitsandbytes layers, the projector's bare weight is not
    assert av.tower_saved_bytes(a, s.replace(vision="quantized"), 2, 4, 4) == (per, step)
    # a loop holding the output keeps image_outputs: last_hidden_state (fp32 18,874,368) and the
    # projector's fp32 output (4·256·2560 = 2,621,440)
    assert av.tower_saved_bytes(a, s.replace(hold_logits="step"), 2, 4, 4) == (per + 18_874_368 + 2_621_440, step)
    assert av.tower_saved_bytes(a, s.replace(grad_checkpointing=False), 2, 4, 4) == (0, 0)


def test_eager_tower_working_memory_is_noted():
    """Under eager attention the images' estimate says what it leaves out (the tower's own working
    memory, its heads·P² scores); under sdpa, or without images, it says nothing of it."""
    a = resolve("gemma-3-4b-it")
    s = Scenario(images=1, image_size="896x896", seq=2048, grad_checkpointing=True, attn="eager")
    assert av.tower_working_note(a, s) and av.tower_working_note(a, s)[0] in av.vision_notes(a, s)
    assert av.tower_working_note(a, s.replace(attn="sdpa")) == ()
    assert av.tower_working_note(a, s.replace(images=0)) == ()
