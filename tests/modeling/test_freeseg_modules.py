"""FreeSeg's modules: the adaptive prompt sequence and its gradients, the feature cache keyed
by task, the interaction head's residual/LN placement, the cosine class head, and the
test-time CLIP ensemble on hand-made inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ovseg_testing.models import random_clip_model
from ovseg_testing.paths import TINY_VIT

from ovseg.clip import CLIPTeacher
from ovseg.modeling.freeseg import (
    AdaptivePromptLearner,
    TextClassHead,
    TextVisualInteraction,
    clip_region_probs,
    ensemble_probs,
    load_prompt_tokens,
    mask_crops,
    query_probs,
)

SEM, INS = "semantic segmentation.", "instance segmentation."


@pytest.fixture(scope="module")
def teacher():
    model, tokenizer, name = random_clip_model(TINY_VIT)
    return CLIPTeacher(model, tokenizer, name=name)


def test_prompt_sequence_is_the_official_order(teacher):
    """Without learnable tokens the prompt is the token sequence [task][SOT][name][.][EOT],
    which CLIP's own encode_text must embed identically (same order, pad, EOT pooling)."""
    prompt = AdaptivePromptLearner(teacher, num_class_tokens=0, num_task_tokens=0)
    tok = teacher.tokenizer
    ids = []
    for name in ("cat", "traffic light"):
        task = tok([SEM])[0]
        noun = tok([name])[0]
        body = [int(t) for t in task[1 : int((task != 0).sum()) - 1]]
        body += [49406] + [int(t) for t in noun[1 : int((noun != 0).sum()) - 1]] + [269, 49407]
        ids.append(body + [0] * (77 - len(body)))
    want = F.normalize(teacher.model.encode_text(torch.tensor(ids)), dim=-1)
    got = prompt(["cat", "traffic light"], SEM)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # with tokens: SOT after the task text and the 8 task tokens, EOT after the name and "."
    full = AdaptivePromptLearner(teacher)
    emb, eot = full.sequences(["cat"], SEM)
    sot_at = ids[0].index(49406) + 8
    sot = teacher.model.token_embedding.weight[49406]
    torch.testing.assert_close(emb[0, sot_at], sot)
    assert int(eot[0]) == sot_at + 16 + 3  # SOT, 16 context tokens, "cat", ".", EOT


def test_prompt_names_choose_the_nouns_prompted(teacher):
    """MODEL.CLIP.PROMPT_NAMES reaches the prompts: the VOC leaves prompt the official
    "tvmonitor" for ovseg's "tv monitor", the same features as prompting "tvmonitor" itself;
    names the map lacks are prompted as they are, with gradients as without a map."""
    plain = AdaptivePromptLearner(teacher)
    mapped = AdaptivePromptLearner(teacher, prompt_names={"tv monitor": "tvmonitor"})
    mapped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        want = plain(["tvmonitor", "sheep"], SEM)
        got = mapped(["tv monitor", "sheep"], SEM)
        spaced = plain(["tv monitor"], SEM)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(spaced[0], want[0], atol=1e-4)
    mapped(["tv monitor"], SEM).sum().backward()
    assert mapped.class_context.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="Prompt names collide"):
        mapped(["tv monitor", "tvmonitor"], SEM)


def test_gradients_reach_only_the_prompt_tokens(teacher):
    prompt = AdaptivePromptLearner(teacher)
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    feats = prompt(["cat", "dog"], INS)
    assert feats.shape == (2, teacher.embed_dim)
    (feats[:, 0] - feats[:, 1]).sum().backward()
    assert prompt.class_context.grad.abs().sum() > 0
    assert prompt.task_context.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.model.parameters())
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in before.items())
    assert not any(k.startswith("_teacher") for k in prompt.state_dict())
    # initialisations: class context N(0, 0.02); task tokens kaiming normal a=2 (std ~0.08)
    assert 0.01 < float(prompt.class_context.detach().std()) < 0.03
    assert 0.04 < float(prompt.task_context.detach().std()) < 0.15


def test_the_frozen_cache_is_keyed_by_task_unless_official(teacher):
    for by_task in (True, False):
        prompt = AdaptivePromptLearner(teacher, cache_by_task=by_task).requires_grad_(False)
        sem = prompt(["cat"], SEM)
        ins = prompt(["cat"], INS)
        assert torch.equal(sem, ins) != by_task  # official: the first task fixes the noun
        fresh = AdaptivePromptLearner(teacher).requires_grad_(False)
        fresh.load_state_dict(prompt.state_dict())
        torch.testing.assert_close(
            fresh(["cat"], INS), prompt.encode(*prompt.sequences(["cat"], INS))
        )
    with pytest.raises(ValueError, match="not one of"):
        prompt(["cat"], "detection.")


def test_trainable_prompts_are_encoded_once_per_evaluation(teacher):
    """The prompt stage's region test: trainable tokens under no_grad encode the vocabulary
    once (not once per region), and a training step's token update is seen at once."""
    prompt = AdaptivePromptLearner(teacher)
    calls = []
    encode = prompt.encode
    prompt.encode = lambda *a: calls.append(1) or encode(*a)
    with torch.no_grad():
        first = prompt(["cat", "dog"], SEM)
        assert torch.equal(prompt(["dog", "cat"], SEM), first.flip(0)) and len(calls) == 1
    optimizer = torch.optim.SGD(prompt.parameters(), lr=10.0)
    prompt(["cat", "dog"], SEM).sum().backward()  # with gradients: recomputed, not cached
    assert len(calls) == 2
    optimizer.step()
    with torch.no_grad():
        after = prompt(["cat", "dog"], SEM)
    assert len(calls) == 3 and not torch.allclose(after, first)
    torch.testing.assert_close(after, prompt.encode(*prompt.sequences(["cat", "dog"], SEM)))


def test_prompt_tokens_load_from_a_checkpoint(teacher, tmp_path):
    learnt = AdaptivePromptLearner(teacher)
    torch.save(
        {"model": {f"prompt.{k}": v for k, v in learnt.state_dict().items()}}, tmp_path / "p.pth"
    )
    target = load_prompt_tokens(AdaptivePromptLearner(teacher), tmp_path / "p.pth")
    assert torch.equal(target.class_context, learnt.class_context) and not target.trainable
    with pytest.raises(ValueError, match="shape"):
        load_prompt_tokens(AdaptivePromptLearner(teacher, num_class_tokens=4), tmp_path / "p.pth")


def test_interaction_residual_on_the_normalised_query():
    torch.manual_seed(0)
    head = TextVisualInteraction(q_dim=8, k_dim=6, embed_dim=16, num_heads=2).eval()
    assert torch.allclose(head.gamma, torch.full((8,), 0.1))
    maps = [torch.randn(2, 8, 3, 4), torch.randn(2, 8, 2, 2)]
    text = torch.randn(5, 6)
    out = head(maps, text)
    k = text.expand(2, 5, 6)
    for x, y in zip(maps, out):
        q = F.layer_norm(x.flatten(2).transpose(1, 2), (8,), head.norm_q.weight, head.norm_q.bias)
        k = head.norm_k(k)  # stacked: map i sees the key norm i + 1 times
        want = q + head.gamma * head.attn(q, k, k)
        torch.testing.assert_close(y, want.transpose(1, 2).reshape(x.shape))
    head.norm_k.weight.data.fill_(2.0)  # the stacking matters once the norm is not identity
    once = TextVisualInteraction(
        q_dim=8, k_dim=6, embed_dim=16, num_heads=2, stacked_key_norm=False
    )
    once.load_state_dict(head.state_dict())
    a, b = head(maps, text), once.eval()(maps, text)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_class_head_is_cosine_with_a_normalised_no_object():
    head = TextClassHead(dim=4)
    text = F.normalize(torch.randn(3, 4), dim=-1)
    q = torch.randn(2, 5, 4)
    logits = head(q, text)
    assert logits.shape == (2, 5, 4)
    keys = torch.cat([text, F.normalize(head.no_object, dim=-1)])
    torch.testing.assert_close(logits, 100 * F.normalize(q, dim=-1) @ keys.t())
    assert float(logits.abs().max()) <= 100 + 1e-4


def test_mask_crops_box_fill_and_resize():
    image = torch.arange(3 * 4 * 5, dtype=torch.float32).view(3, 4, 5)
    masks = torch.zeros(2, 4, 5)
    masks[0, 1, 1] = masks[0, 2, 3] = 0.9  # box rows 1-2, cols 1-3
    masks[1, 0, 0] = 0.4  # below the threshold: empty
    fill = torch.tensor([7.0, 8.0, 9.0])
    crops, valid = mask_crops(image, masks, fill, (2, 3))
    assert valid.tolist() == [True, False] and crops.shape == (1, 3, 2, 3)
    want = fill.view(3, 1, 1).repeat(1, 2, 3)
    want[:, 0, 0] = image[:, 1, 1]
    want[:, 1, 2] = image[:, 2, 3]
    torch.testing.assert_close(crops[0], want)  # the box at its own size: no resampling


def test_mask_crops_expand_about_the_centre_truncated_and_clipped():
    image = torch.arange(3 * 10 * 10, dtype=torch.float32).view(3, 10, 10)
    masks = torch.zeros(2, 10, 10)
    masks[0, 4:6, 4:7] = 1  # box x 4-7, y 4-6: x2 -> centre 5.5, width 6 -> 2.5..8.5 -> 2..8
    masks[1, 0:2, 0:2] = 1  # x3 at the corner: -2..4 -> clipped to 0..4
    fill = torch.tensor([7.0, 8.0, 9.0])
    crops, _ = mask_crops(image, masks[:1], fill, (4, 6), expand_ratio=2.0)
    want = fill.view(3, 1, 1).repeat(1, 4, 6)  # rows 3..7, cols 2..8 at their own size
    want[:, 1:3, 2:5] = image[:, 4:6, 4:7]
    torch.testing.assert_close(crops[0], want)
    crops, _ = mask_crops(image, masks[1:], fill, (4, 4), expand_ratio=3.0)
    want = fill.view(3, 1, 1).repeat(1, 4, 4)
    want[:, :2, :2] = image[:, :2, :2]
    torch.testing.assert_close(crops[0], want)
    with pytest.raises(ValueError, match="MASK_EXPAND_RATIO"):
        mask_crops(image, masks, fill, (4, 4), expand_ratio=0.5)


def test_clip_probs_give_empty_masks_ones(teacher):
    image = torch.rand(3, 32, 32) * 255
    masks = torch.zeros(3, 32, 32)
    masks[0, :16] = 1
    masks[2, 8:, 8:] = 1
    text = F.normalize(torch.randn(4, teacher.embed_dim), dim=-1)
    p = clip_region_probs(teacher, image, masks, text)
    assert torch.equal(p[1], torch.ones(4))
    torch.testing.assert_close(p[[0, 2]].sum(-1), torch.ones(2))
    # every query empty (an untrained model): ones, and the image tower is not run
    calls = []
    teacher.encode_image = lambda x: calls.append(x)
    try:
        assert torch.equal(clip_region_probs(teacher, image, masks * 0, text), torch.ones(3, 4))
    finally:
        del teacher.encode_image
    assert calls == []


def _image_and_two_masks():
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32) * 255
    masks = torch.zeros(2, 32, 32)
    masks[0, :16] = 1
    masks[1, 8:, 8:] = 1
    return image, masks


def test_clip_probs_are_a_softmax_of_100_cosines(teacher):
    # official adapter.py:69-71: CLIP's logit scale 100 over the crops' cosines with the text
    image, masks = _image_and_two_masks()
    text = F.normalize(torch.randn(4, teacher.embed_dim), dim=-1)
    crops, _ = mask_crops(image, masks, teacher.pixel_mean.flatten(), teacher.image_size)
    want = (100 * teacher.encode_image(crops) @ text.t()).softmax(-1)
    torch.testing.assert_close(clip_region_probs(teacher, image, masks, text), want)


def test_clip_probs_stay_float32_for_bf16_text(teacher):
    # under autocast the prompted text tower returns bf16 texts: the probabilities were then
    # stored in the texts' bf16 (1e-3 from float32), though their logits are float32
    image, masks = _image_and_two_masks()
    text = F.normalize(torch.randn(4, teacher.embed_dim), dim=-1).bfloat16()
    want = clip_region_probs(teacher, image, masks, text.float())
    got = clip_region_probs(teacher, image, masks, text)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def test_a_mask_at_exactly_the_threshold_is_empty():
    # adapter.py:155 keeps pixels with mask > MASK_THR: one pixel of 0.5 is no crop
    masks = torch.zeros(1, 4, 4)
    masks[0, 1, 1] = 0.5
    _, valid = mask_crops(torch.zeros(3, 4, 4), masks, torch.zeros(3), (2, 2))
    assert valid.tolist() == [False]


def test_ensemble_by_hand():
    logits = torch.log(torch.tensor([[2.0, 1.0, 1.0]]))  # softmax (0.5, 0.25, 0.25)
    p_q = query_probs(logits)
    torch.testing.assert_close(p_q, torch.tensor([[0.5, 0.25]]))  # not renormalised
    p_clip = torch.tensor([[0.2, 0.8]])
    seen = torch.tensor([True, False])
    p = ensemble_probs(p_q, p_clip, seen, weight=0.8)
    want = [0.5**0.8 * 0.2**0.2, 0.25**0.2 * 0.8**0.8]
    torch.testing.assert_close(p, torch.tensor([want]))
    all_unseen = ensemble_probs(p_q, p_clip, None, weight=0.4)
    torch.testing.assert_close(
        all_unseen, torch.tensor([[0.5**0.6 * 0.2**0.4, 0.25**0.6 * 0.8**0.4]])
    )
    with pytest.raises(ValueError, match="ENSEMBLE_WEIGHT"):
        ensemble_probs(p_q, p_clip, seen, weight=0.0)


def test_task_text_comes_before_the_task_tokens(teacher):
    # [task text][task tokens][SOT][class context][name][.][EOT], as the release
    # (text_prompt.py:124-127: task_prompt = [task_embed], then the learnable task prompt)
    prompt = AdaptivePromptLearner(teacher, num_class_tokens=2, num_task_tokens=3)
    with torch.no_grad():
        prompt.task_context.copy_(torch.arange(3.0)[:, None].expand_as(prompt.task_context))
        prompt.class_context.fill_(-7.0)
    row = teacher.tokenizer([SEM])[0]
    task_ids = row[1 : int((row != 0).sum()) - 1]
    n = len(task_ids)
    emb, _ = prompt.sequences(["cat"], SEM)
    table = teacher.model.token_embedding.weight
    torch.testing.assert_close(emb[0, :n], table[task_ids])
    torch.testing.assert_close(emb[0, n : n + 3], prompt.task_context)
    torch.testing.assert_close(emb[0, n + 3], table[49406])  # SOT
    torch.testing.assert_close(emb[0, n + 4 : n + 6], prompt.class_context)
