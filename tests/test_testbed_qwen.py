"""tools/train_testbed_qwen.py: a tiny run trains all four stages, exports a Qwen2-VL checkpoint the project's
adapter loads and answers with, and a run stopped, resumed and split over processes by stage ends with the
weights of one run."""

from __future__ import annotations

import importlib
import random
import sys
import warnings

import pytest
import torch
from laser.adapters import create_adapter
from PIL import Image
from safetensors.torch import load_file

from laser import LaserConfig, LaserEngine
from laser.paths import assets_dir

TINY = ["--vision-steps", "4", "--symbol-steps", "4", "--token-align-steps", "2", "--steps", "4", "--batch", "3",
        "--vision-batch", "4", "--eval-n", "4", "--dev-scenes", "1", "--log-every", "2", "--ckpt-every", "2",
        "--eval-every", "4", "--export-every", "4", "--warmup", "2"]
MAX_BYTES = 20 * 2**20


def train(monkeypatch, *args: str) -> None:
    module = importlib.import_module("train_testbed_qwen")
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["train_testbed_qwen.py", *args])
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dev_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("qwen_dev") / "seed1")


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, dev_root):
    root = tmp_path_factory.mktemp("qwen_run")
    with pytest.MonkeyPatch.context() as mp:
        train(mp, *TINY, "--run", str(root / "run"), "--export", str(root / "export"), "--dev-root", dev_root)
    return root / "export"


def test_patchify_matches_the_processor():
    from testbed import views
    from testbed.qwen import QwenBatcher, build_processor, build_tokenizer, prompt

    tok = build_tokenizer()
    for size, max_pixels in ((64, 64 * 64), (128, 128 * 128)):
        proc = build_processor(tok, max_pixels=max_pixels)
        d = views.sample_views(random.Random(0), 2, 2, size=size)
        assert d["color_labels"].shape == (2, (size // 8) ** 2)
        inputs, labels = QwenBatcher(tok, proc)(d)
        ref = proc(text=[prompt(q) for q in d["questions"]], images=[Image.fromarray(x) for x in d["pixels"]],
                   return_tensors="pt", padding=True)
        assert torch.equal(inputs["image_grid_thw"], ref["image_grid_thw"])
        assert torch.equal(ref["image_grid_thw"][0], torch.tensor([1, size // 8, size // 8]))
        torch.testing.assert_close(inputs["pixel_values"], ref["pixel_values"])
        for i in range(2):
            prompt_ids = inputs["input_ids"][i][(labels[i] == -100) & (inputs["attention_mask"][i] == 1)]
            assert prompt_ids.tolist() == ref["input_ids"][i][ref["attention_mask"][i] == 1].tolist()


@pytest.mark.parametrize("size", [64, 128])
def test_merged_tokens_follow_the_label_grid(size):
    """Visual token k (rows MERGE^2 k .. MERGE^2 (k + 1) - 1 of `pixel_values`, the patches the merger joins)
    covers label cell k of `views.sample_views(size=...)`: 8x8 px, row-major on the (size/8) x (size/8) grid."""
    from testbed.qwen import MERGE, PATCH, patchify

    grid = size // 8
    for r, c in ((0, 0), (2, 5), (grid - 1, grid - 3)):
        image = torch.zeros(1, 3, size, size)
        image[:, :, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 1.0
        rows, thw = patchify(image)
        assert thw.tolist() == [[1, size // PATCH, size // PATCH]]
        tokens = (rows.abs().sum(1) > 0).nonzero().flatten() // MERGE**2
        assert set(tokens.tolist()) == {r * grid + c}


def test_trains_exports_and_answers(one_run):
    assert (one_run / "model.safetensors").stat().st_size <= MAX_BYTES
    assert (one_run / "training_commands.txt").read_text().startswith("python tools/train_testbed_qwen.py ")
    adapter = create_adapter(str(one_run))
    assert type(adapter).__name__ == "Qwen2VLAdapter" and adapter.num_layers == 4
    image = Image.open(assets_dir() / "testbed" / "images" / "scene_10000001.png").convert("RGB")
    inputs = adapter.build_inputs([image], ["What digit is in the red box?"])
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]  # 64*64 pixels: 8x8 patches, one token each
    assert adapter.visual_layout(inputs, 0).segments[0].grid == (8, 8)
    pred = LaserEngine(adapter, LaserConfig.preset("laser")).answer(image, "What digit is in the red box?")
    assert isinstance(pred.answer, str)
    hires = create_adapter(str(one_run), processor_kwargs={"max_pixels": 128 * 128})
    crop = image.crop((0, 0, 24, 24))
    fixed = create_adapter(str(one_run), processor_kwargs={"min_pixels": 128 * 128, "max_pixels": 128 * 128})
    with warnings.catch_warnings():  # the bounds are the processor's size, not deprecated call arguments
        warnings.simplefilter("error", FutureWarning)
        assert hires.build_inputs([image], ["What digit is in the red box?"])["image_grid_thw"].tolist() == [[1, 16, 16]]
        assert hires.build_inputs([crop], ["What digit is in the red box?"])["image_grid_thw"].tolist() == [[1, 8, 8]]
        assert fixed.build_inputs([crop], ["What digit is in the red box?"])["image_grid_thw"].tolist() == [[1, 16, 16]]


def test_resumed_and_split_run_matches_one_run(one_run, tmp_path, monkeypatch, dev_root):
    common = [*TINY, "--run", str(tmp_path / "run"), "--export", str(tmp_path / "export"), "--dev-root", dev_root]
    train(monkeypatch, *common, "--stages", "symbolic", "--max-steps-now", "3")  # stopped inside the symbolic stage
    train(monkeypatch, *common, "--stages", "tower,symbolic", "--max-steps-now", "3")  # tower stopped at step 3
    train(monkeypatch, *common, "--stages", "image")  # waits: its inputs are not finished
    assert not (tmp_path / "export").exists()
    train(monkeypatch, *common, "--max-steps-now", "5")  # tower and symbolic finished, align done, image stopped
    train(monkeypatch, *common)
    resumed, whole = load_file(tmp_path / "export" / "model.safetensors"), load_file(one_run / "model.safetensors")
    assert resumed.keys() == whole.keys()
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_unknown_stage_is_named(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(monkeypatch, "--run", str(tmp_path / "run"), "--stages", "tower,vision")
    assert "unknown stage(s) ['vision']" in capsys.readouterr().err


def test_conversation_batches_put_labels_on_every_answer():
    """`QwenBatcher.turns`: one conversation per view, the answers (and only they) labelled, every turn's
    first answer token right after its "assistant" line."""
    from testbed import views
    from testbed.batching import answer_starts
    from testbed.qwen import QwenBatcher, build_processor, build_tokenizer

    tok = build_tokenizer()
    d = views.sample_turns(random.Random(3), 4, 2, turns=3)
    inputs, labels, turns = QwenBatcher(tok, build_processor(tok)).turns(d)
    assert len(turns) == sum(len(c) for c in d["turns"]) == int(answer_starts(labels).sum())
    answers = [a for conv in d["turns"] for (_, _, a, _, _) in conv]
    first = labels[:, 1:][answer_starts(labels)]
    assert tok.convert_ids_to_tokens(first.tolist()) == [a.lower().split()[0] for a in answers]
    assert int((inputs["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) == 4 * 64


def test_sparse_digit_tokens_keep_every_colour_and_some_digits():
    from testbed import views
    from testbed.qwen import build_model, build_tokenizer
    from train_emergent import symbolic_tokens
    from train_testbed_qwen import sparse_digit_tokens

    tok = build_tokenizer()
    model = build_model(tok)
    d = views.sample_views(random.Random(1), 6, 0)
    full = symbolic_tokens(model, tok, d)
    colour = sparse_digit_tokens(model, tok, d, 0.0)
    assert torch.equal(sparse_digit_tokens(model, tok, d, 1.0), full)
    digit_cells = torch.from_numpy((d["digit_labels"] >= 0) & (d["digit_labels"] < 10))
    assert digit_cells.sum() > 20
    assert torch.equal(colour[~digit_cells], full[~digit_cells]) and not torch.allclose(colour[digit_cells], full[digit_cells])
    half = sparse_digit_tokens(model, tok, d, 0.5, torch.Generator().manual_seed(0))
    kept = (half == full).all(-1) & digit_cells
    assert ((half == full).all(-1) | (half == colour).all(-1)).all()
    assert 0.25 < kept.sum() / digit_cells.sum() < 0.75


def test_lm_seed_draws_another_language_model_and_keeps_the_tower(tmp_path):
    from train_testbed_qwen import Run, parse_args

    def initial(lm_seed):
        seed = [] if lm_seed is None else ["--lm-seed", str(lm_seed)]
        return Run(parse_args(["--run", str(tmp_path / f"run{lm_seed}"), "--lm-from", "", *seed])).model.state_dict()

    base, other, again = initial(None), initial(1), initial(1)
    for key in base:
        assert torch.equal(other[key], again[key]), key  # seeded
        if key.startswith("model.visual."):
            assert torch.equal(base[key], other[key]), key
    changed = [k for k in base if not torch.equal(base[k], other[k])]
    assert "lm_head.weight" in changed and "model.language_model.embed_tokens.weight" in changed
    assert other["model.language_model.embed_tokens.weight"].std() == pytest.approx(0.02, rel=0.05)


def test_language_model_from_a_trained_llava_answers_text_as_it_does(tmp_path):
    """`--lm-from`: on text alone (where mrope is the 1D rotary embedding) the Qwen2-VL model with the shipped
    LLaVA's LM gives that LM's next-token logits over the words of the prompt, token for token."""
    from train_testbed_qwen import Run, parse_args
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    source = assets_dir() / "testbed_emergent" / "model"
    run = Run(parse_args(["--run", str(tmp_path / "run"), "--lm-from", str(source)]))
    llava = LlavaForConditionalGeneration.from_pretrained(source).eval()
    llava_tok = AutoTokenizer.from_pretrained(source)
    words = "what digit is in the red box left of the blue box ?".split()
    theirs = torch.tensor([llava_tok.convert_tokens_to_ids(words)])
    ours = torch.tensor([run.tok.convert_tokens_to_ids(words)])
    assert llava_tok.unk_token_id not in theirs and run.tok.unk_token_id not in ours
    with torch.no_grad():
        expected = llava(input_ids=theirs).logits[0, :, theirs[0]]
        got = run.model.eval()(input_ids=ours).logits[0, :, ours[0]]
    # the RMS norms' epsilon is Qwen2's (1e-5), the LLaVA's is 1e-6: logits of about 10 agree to 0.05
    assert torch.allclose(got, expected, atol=0.05), (got - expected).abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_align_stage_draws_the_same_views_whatever_an_earlier_stage_left(one_run, tmp_path, monkeypatch, dev_root):
    """The question families `views.sample_turns` draws from are module state that the symbolic stage sets: the
    align stage (and the tower stage) set their own, so a stage gives the same weights whether it follows
    another stage in one process or starts in a new one."""
    from testbed import views

    merger = []
    for left in (None, {"existence": 1.0}):
        run = tmp_path / f"run{len(merger)}"
        run.mkdir()
        for stage in ("tower", "symbolic"):  # the finished stages of one run
            (run / f"{stage}.pt").write_bytes((one_run.parent / "run" / f"{stage}.pt").read_bytes())
        if left:
            monkeypatch.setattr(views, "FAMILY_WEIGHTS", dict(left))
        train(monkeypatch, *TINY, "--run", str(run), "--export", str(tmp_path / "export"), "--dev-root", dev_root,
              "--stages", "align")
        merger.append(torch.load(run / "align.pt", weights_only=False)["modules"]["merger"])
    for key in merger[0]:
        assert torch.equal(merger[0][key], merger[1][key]), key


def test_resuming_a_stage_with_other_settings_is_refused_and_names_them(tmp_path, monkeypatch, dev_root, capsys):
    common = [*TINY, "--run", str(tmp_path / "run"), "--export", str(tmp_path / "export"), "--dev-root", dev_root]
    train(monkeypatch, *common, "--stages", "tower", "--max-steps-now", "1")
    with pytest.raises(SystemExit, match=r"--patch-digit 1\.0 \(now 0\.5\)"):
        train(monkeypatch, *common, "--stages", "tower", "--patch-digit", "0.5")
    train(monkeypatch, *common, "--stages", "tower", "--max-steps-now", "1", "--log-every", "1")  # plumbing may change


def test_lm_seed_without_a_language_model_from_scratch_is_refused(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train(monkeypatch, "--run", str(tmp_path / "run"), "--lm-seed", "2")
    assert "--lm-from ''" in capsys.readouterr().err
