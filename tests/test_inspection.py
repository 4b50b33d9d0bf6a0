"""The alignment picture: `hf-dwakd inspect`, the training callback, and that its numbers are the objective's."""

import json
import sys
import types

import pytest
import torch
from matplotlib.image import imread
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers.integrations import TensorBoardCallback

from hf_dwakd import DWAKDConfig
from hf_dwakd.cli import main as cli_main
from hf_dwakd.inspection import AlignmentPlotCallback
from hf_dwakd.objective import dwakd as dwakd_module
from hf_dwakd.projectors import DWAKDProjectors
from hf_dwakd.trainer import PROJECTORS_NAME

from testing_utils import ROWS, load_tokenizer, make_trainer, tiny_causal_lm

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT, RESPONSE = ROWS[3]["prompt"], ROWS[3]["completion"]


def plot_callback(trainer):
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AlignmentPlotCallback))


def read_picture(png_path):
    """(height, width) of the PNG, checked to be a real, small PNG, and the JSON beside it."""
    data = png_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and 5_000 < len(data) < 300_000
    height, width = imread(png_path).shape[:2]
    return (height, width), json.loads(png_path.with_suffix(".json").read_text(encoding="utf-8"))


def check_numbers(numbers):
    n, m = len(numbers["student_tokens"]), len(numbers["teacher_tokens"])
    attention, expected = torch.tensor(numbers["attention"]), torch.tensor(numbers["expected_alignment"])
    assert attention.shape == expected.shape == (n, m) and n > 0 and m > 0
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(n))
    # Every soft alignment path starts and ends in the corner cells; all entries are probabilities.
    assert expected[0, 0] == pytest.approx(1, abs=1e-5) and expected[-1, -1] == pytest.approx(1, abs=1e-5)
    assert float(expected.min()) >= -1e-6 and float(expected.max()) <= 1 + 1e-6
    assert len(numbers["band_center"]) == len(numbers["band_width"]) == n
    assert 0 <= numbers["band_mass"] <= 1 + 1e-6 and numbers["mean_row_entropy"] >= 0
    assert {"ce", "kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed", "loss"} <= numbers["losses"].keys()


def test_picture_numbers_are_what_dwakd_loss_uses_on_the_same_batch(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, rows=ROWS[3:4], alignment_plot_steps=5)
    callback = plot_callback(trainer)
    used = {}

    def recorded(name, function):
        def wrapper(*args, **kwargs):
            used[name] = function(*args, **kwargs)
            return used[name]

        return wrapper

    monkeypatch.setattr(
        dwakd_module, "cross_model_attention", recorded("attention", dwakd_module.cross_model_attention)
    )
    monkeypatch.setattr(dwakd_module, "attention_band", recorded("band", dwakd_module.attention_band))
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, callback.batch)
    logged = {key: values[-1] for key, values in trainer._metrics["eval"].items()}
    monkeypatch.undo()

    callback.draw(trainer.args, trainer.state)
    _, numbers = read_picture(tmp_path / "out" / "alignment" / "step-000000.png")
    check_numbers(numbers)
    n, m = len(numbers["student_tokens"]), len(numbers["teacher_tokens"])
    torch.testing.assert_close(torch.tensor(numbers["attention"]), used["attention"].t2s_attention[0, :n, :m])
    torch.testing.assert_close(torch.tensor(numbers["band_center"]), used["band"].center[0, :n])
    torch.testing.assert_close(torch.tensor(numbers["band_width"]), used["band"].width[0, :n])
    for key in ("ce", "kd_student", "kd_teacher", "ce_t2s", "dtw_hidden", "dtw_embed"):
        assert numbers["losses"][key] == pytest.approx(logged[key], rel=1e-5), key
    # The response tokens on the axes, decoded one by one, spell the response (its indentation token shown as dots).
    assert "".join(numbers["student_tokens"]).replace("\\n", "\n").replace("·", " ").startswith(RESPONSE)


def test_callback_draws_before_training_and_every_n_steps(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, alignment_plot_steps=2)
    trainer.train()
    folder = tmp_path / "out" / "alignment"
    assert sorted(path.name for path in folder.glob("*.png")) == [f"step-00000{s}.png" for s in (0, 2, 4)]
    steps = [json.loads((folder / f"step-00000{s}.json").read_text())["step"] for s in (0, 2, 4)]
    assert steps == [0, 2, 4]


def test_callback_off_by_default_costs_nothing(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    assert trainer.args.alignment_plot_steps == 0
    assert not any(isinstance(cb, AlignmentPlotCallback) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    assert not (tmp_path / "out" / "alignment").exists()


def test_callback_runs_one_forward_of_each_model_and_logs_to_trackers(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, alignment_plot_steps=1)
    callback = plot_callback(trainer)
    callback.draw(trainer.args, trainer.state)  # the first picture also settles each model's forward, once
    calls = {"student": 0, "teacher": 0}
    for role, model in (("student", trainer.model), ("teacher", trainer.teacher_model)):
        model.register_forward_hook(lambda *_, role=role: calls.__setitem__(role, calls[role] + 1))

    class Writer:
        def __init__(self):
            self.figures = []

        def add_figure(self, tag, figure, global_step, close=True):
            self.figures.append((tag, global_step, figure.get_size_inches()))

    tensorboard = TensorBoardCallback.__new__(TensorBoardCallback)  # no tensorboard package needed
    tensorboard.tb_writer = Writer()
    trainer.add_callback(tensorboard)
    logged = []
    fake_wandb = types.SimpleNamespace(run=object(), Image=lambda path: ("image", path), log=logged.append)
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    trainer.args.report_to = ["tensorboard", "wandb"]
    trainer.state.global_step = 7

    callback.draw(trainer.args, trainer.state)
    assert calls == {"student": 1, "teacher": 1}
    png_path = tmp_path / "out" / "alignment" / "step-000007.png"
    assert png_path.is_file()
    assert [(tag, step) for tag, step, _ in tensorboard.tb_writer.figures] == [("train/alignment", 7)]
    assert logged == [{"train/alignment": ("image", str(png_path)), "train/global_step": 7}]


def test_config_refuses_a_negative_period_and_other_methods(tmp_path):
    with pytest.raises(ValueError, match="alignment_plot_steps"):
        DWAKDConfig(output_dir=str(tmp_path), alignment_plot_steps=-1, use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="alignment_plot_steps"):
        DWAKDConfig(output_dir=str(tmp_path), alignment_plot_steps=5, kd_method="dskd", use_cpu=True, report_to="none")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install hf-dwakd\[plot\]"):
        DWAKDConfig(output_dir=str(tmp_path), alignment_plot_steps=5, use_cpu=True, report_to="none")


# ---- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A tiny full student and a LoRA adapter of it, each with projectors beside it, and a tiny teacher."""
    root = tmp_path_factory.mktemp("models")
    student_tokenizer, teacher_tokenizer = load_tokenizer("gpt2"), load_tokenizer("llama2")
    student = tiny_causal_lm(student_tokenizer, hidden_size=16, seed=1)
    teacher = tiny_causal_lm(teacher_tokenizer, hidden_size=24, seed=2)
    for name, model, tokenizer in (("student", student, student_tokenizer), ("teacher", teacher, teacher_tokenizer)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    torch.manual_seed(3)
    projectors = {k: v.contiguous() for k, v in DWAKDProjectors(16, 24).state_dict().items()}
    save_file(projectors, root / "student" / PROJECTORS_NAME)
    student = AutoModelForCausalLM.from_pretrained(root / "student")  # the adapter names its base model's folder
    adapter = get_peft_model(student, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(root / "adapter")
    student_tokenizer.save_pretrained(root / "adapter")
    save_file(projectors, root / "adapter" / PROJECTORS_NAME)
    return root


@pytest.mark.parametrize("student", ["student", "adapter"])
def test_inspect_writes_png_and_json(saved_models, tmp_path, student):
    output = tmp_path / "picture.png"
    common = ["--student", str(saved_models / student), "--teacher", str(saved_models / "teacher")]
    cli_main(["inspect", *common, "--text", PROMPT, "--response", RESPONSE, "--output", str(output)])
    (height, width), numbers = read_picture(output)
    check_numbers(numbers)
    assert numbers["step"] is None and height > 300 and width > 600

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in ROWS), encoding="utf-8")
    from_data = tmp_path / "from_data.png"
    cli_main(["inspect", *common, "--data", str(data), "--index", "3", "--output", str(from_data)])
    from_data_numbers = read_picture(from_data)[1]
    assert from_data_numbers["student_tokens"] == numbers["student_tokens"]
    torch.testing.assert_close(torch.tensor(from_data_numbers["attention"]), torch.tensor(numbers["attention"]))


def test_inspect_draws_the_aligned_start_fitted_on_a_training_file(saved_models, tmp_path):
    """`--fit_projectors` draws with the projectors that `fit_aligned_projectors` gives on those rows."""
    from hf_dwakd.inspection.command import build_parser, fit_on_rows
    from hf_dwakd.model_side import ModelSide

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in ROWS), encoding="utf-8")
    common = ["--student", str(saved_models / "student"), "--teacher", str(saved_models / "teacher")]
    example = ["--text", PROMPT, "--response", RESPONSE]
    fitted = tmp_path / "fitted.png"
    cli_main(["inspect", *common, *example, "--fit_projectors", str(data), "--fit_rows", "6", "--output", str(fitted)])

    args = build_parser().parse_args([*common, "--fit_projectors", str(data), "--fit_rows", "6", "--output", "x.png"])
    models = [AutoModelForCausalLM.from_pretrained(saved_models / name) for name in ("student", "teacher")]
    tokenizers = [load_tokenizer(name) for name in ("gpt2", "llama2")]
    projectors = DWAKDProjectors(16, 24)
    sides = (
        ModelSide("student", len(tokenizers[0]), model=models[0], unpadded_forward=False),
        ModelSide("teacher", len(tokenizers[1]), prefix="teacher_", model=models[1], unpadded_forward=False),
    )
    fit = fit_on_rows(projectors, sides, *tokenizers, args)
    assert fit.examples == 6
    saved = tmp_path / "projectors.safetensors"
    save_file({k: v.contiguous() for k, v in projectors.state_dict().items()}, saved)
    loaded = tmp_path / "loaded.png"
    cli_main(["inspect", *common, *example, "--projectors", str(saved), "--output", str(loaded)])
    fitted_numbers, loaded_numbers = read_picture(fitted)[1], read_picture(loaded)[1]
    torch.testing.assert_close(torch.tensor(fitted_numbers["attention"]), torch.tensor(loaded_numbers["attention"]))
    random_numbers = read_picture_of_random(saved_models, tmp_path, common, example)
    assert fitted_numbers["mean_row_entropy"] < random_numbers["mean_row_entropy"]


def read_picture_of_random(saved_models, tmp_path, common, example):
    output = tmp_path / "random.png"
    cli_main(["inspect", *common, *example, "--output", str(output)])
    return read_picture(output)[1]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--text", "a", "--response", "b", "--fit_projectors", "missing.jsonl"], "--fit_projectors missing.jsonl"),
        (
            ["--text", "a", "--response", "b", "--fit_projectors", __file__, "--projectors", "p.safetensors"],
            "not both",
        ),
        (["--text", "a"], "--text and --response go together"),
        (["--text", "a", "--response", "b", "--data", "x.jsonl", "--index", "0"], "either as --text"),
        (["--data", "missing.jsonl", "--index", "0"], "does not exist"),
        (["--text", "a", "--response", "b", "--projectors", "none.safetensors"], "no projectors at none"),
    ],
)
def test_inspect_refuses_bad_input_before_loading(saved_models, tmp_path, capsys, arguments, message):
    models = ["--student", str(saved_models / "student"), "--teacher", str(saved_models / "teacher")]
    with pytest.raises(SystemExit) as raised:
        cli_main(["inspect", *models, *arguments, "--output", str(tmp_path / "p.png")])
    assert raised.value.code == 2 and message in capsys.readouterr().err
