"""Helpers shared by the test files: fixture paths, tokenizers, tiny models, objective inputs, trainers.

Test files import from here; `conftest.py` only defines pytest fixtures (built with these helpers).
"""

import fnmatch
import functools
import json
import math
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from hf_dwakd import DWAKDConfig, DWAKDTrainer
from hf_dwakd.objective import SideOutputs
from hf_dwakd.projectors import DWAKDProjectors
from hf_dwakd.trainer import PROJECTORS_NAME

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
# A few lines of each benchmark in the `--data_dir` layout (see fixtures/data/NOTICE.md).
DATA = FIXTURES / "data"
# The full evaluation sets, beside a working copy of the project only: for the tests of exact counts.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="../shared/data is not beside this clone"
)


# ---- tokenizers and tiny models -------------------------------------------------------------------------------------


def load_tokenizer(name):
    """`gpt2` (byte-level BPE, 50,257) or `llama2` (SentencePiece with byte fallback, 32,000)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.cache
def shared_tokenizers():
    """The GPT-2 and Llama-2 tokenizers loaded once, for the tests that only read them (a load takes a second):
    callers that change a tokenizer (a chat template, ...) load their own with `load_tokenizer`."""
    return load_tokenizer("gpt2"), load_tokenizer("llama2")


# A ChatML-like template for the student and a Llama-2 [INST]-like one for the teacher (the fixtures have none).
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INST = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)


def tiny_causal_lm(tokenizer, family="llama", hidden_size=32, num_layers=1, vocab_size=None, seed=0, **config_fields):
    """A random-init causal LM sized for `tokenizer` (or a padded `vocab_size`), built from config; `config_fields`
    go to the config as they are (e.g. `final_logit_softcapping` for "gemma3")."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    vocab_size = vocab_size or len(tokenizer)
    common = dict(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_fields,
    )
    if family == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=2, n_positions=1024, **common)
        return GPT2LMHeadModel(config)
    decoder = dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        max_position_embeddings=1024,
        **common,
    )
    if family == "gemma3":  # sliding-window attention over 4 tokens in every layer but each sixth
        config = Gemma3TextConfig(num_key_value_heads=1, head_dim=hidden_size // 2, sliding_window=4, **decoder)
        return Gemma3ForCausalLM(config)
    return LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **decoder))


def save_tiny_model(folder, tokenizer_name, family="llama", hidden_size=32, seed=0):
    """`tiny_causal_lm` for the fixture tokenizer `tokenizer_name`, saved with that tokenizer in `folder`."""
    tokenizer = load_tokenizer(tokenizer_name)
    tiny_causal_lm(tokenizer, family=family, hidden_size=hidden_size, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def logits_side(logits, labels, vocab_size=None):
    """A `SideOutputs` holding only logits (with gradient) and labels; hidden states and embeddings are zeros."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    batch, length, width = logits.shape
    return SideOutputs(
        logits=logits.clone().requires_grad_(True),
        hidden=torch.zeros(batch, length, 2, requires_grad=True),
        input_embeds=torch.zeros(batch, length, 2),
        target_embeds=torch.zeros(batch, length, 2),
        labels=torch.as_tensor(labels),
        lm_head_weight=torch.zeros(width, 2),
        vocab_size=vocab_size or width,
    )


# ---- inputs of the objective ----------------------------------------------------------------------------------------

# Response positions (label != -100) per example; example 1 has a hole, as a mask may.
STUDENT_RESPONSES = [range(4, 14), [2, 3, 5, 6, 7, 8], range(9, 12)]
TEACHER_RESPONSES = [range(3, 11), range(5, 12), range(12, 14)]
LENGTH = 15
STUDENT = dict(vocab_size=50, width=53, hidden=8)  # a padded LM head: 53 logit columns, 50 tokens
TEACHER = dict(vocab_size=40, width=40, hidden=12)


def make_side(positions, vocab_size, width, hidden, seed, requires_grad=True, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    batch = len(positions)

    def leaf(*shape, scale=1.0):
        value = (scale * torch.randn(*shape, generator=generator)).to(dtype)
        return value.requires_grad_(requires_grad)

    labels = torch.full((batch, LENGTH), -100)
    for b, rows in enumerate(positions):
        rows = list(rows)
        labels[b, rows] = torch.randint(0, vocab_size, (len(rows),), generator=generator)
    return SideOutputs(
        logits=leaf(batch, LENGTH, width, scale=3.0),
        hidden=leaf(batch, LENGTH, hidden),
        input_embeds=leaf(batch, LENGTH, hidden),
        target_embeds=leaf(batch, LENGTH, hidden),
        labels=labels,
        lm_head_weight=leaf(width, hidden),
        vocab_size=vocab_size,
    )


def make_inputs(seed=0, requires_grad=True, dtype=torch.float32, teacher_requires_grad=False):
    student = make_side(STUDENT_RESPONSES, **STUDENT, seed=seed, requires_grad=requires_grad, dtype=dtype)
    teacher = make_side(TEACHER_RESPONSES, **TEACHER, seed=seed + 1, requires_grad=teacher_requires_grad, dtype=dtype)
    torch.manual_seed(seed + 2)
    projectors = DWAKDProjectors(STUDENT["hidden"], TEACHER["hidden"])
    return student, teacher, projectors


# ---- a token-level divergence, one token at a time in python floats -------------------------------------------------


def _softmax(logits, temperature):
    values = [x / temperature for x in logits]
    top = max(values)
    exps = [math.exp(x - top) for x in values]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p, q):
    return sum(pv * (math.log(pv) - math.log(qv)) for pv, qv in zip(p, q) if pv > 0)


def _mix(a, b, weight_a):
    return [weight_a * x + (1 - weight_a) * y for x, y in zip(a, b)]


def reference_divergence(name, logits, target_logits, temperature, skew=0.1):
    """One token: q from `logits` (the model), p from `target_logits` (the target), python floats."""
    q = _softmax(logits, temperature)
    p = _softmax(target_logits, temperature)
    if name == "forward_kl":
        return _kl(p, q)
    if name == "reverse_kl":
        return _kl(q, p)
    if name == "skewed_forward_kl":
        return _kl(p, _mix(p, q, skew))
    if name == "skewed_reverse_kl":
        return _kl(q, _mix(q, p, skew))
    if name == "js":
        m = _mix(p, q, 0.5)
        return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    if name == "adaptive_kl":
        head, mass = set(), 0.0
        for v in sorted(range(len(p)), key=lambda v: -p[v]):
            if mass >= 0.5:
                break
            head.add(v)
            mass += p[v]
        gap_head = sum(abs(p[v] - q[v]) for v in head)
        gap_tail = sum(abs(p[v] - q[v]) for v in range(len(p)) if v not in head)
        total = gap_head + gap_tail
        return gap_head / total * _kl(p, q) + gap_tail / total * _kl(q, p)
    raise KeyError(name)


# ---- the trainer on tiny models -------------------------------------------------------------------------------------

ROWS = [
    {"prompt": "### Instruction:\nName a colour.\n\n### Response:\n", "completion": "Blue, like the sky."},
    {"prompt": "### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "completion": "2 + 3 = 5"},
    {"prompt": "### Instruction:\nSay hello in Chinese.\n\n### Response:\n", "completion": "你好！"},
    {
        "prompt": "### Instruction:\nWrite a Python function.\n\n### Response:\n",
        "completion": "def f(x):\n    return x",
    },
    {"prompt": "### Instruction:\nGive an emoji.\n\n### Response:\n", "completion": "Here you go: 🙂"},
    {"prompt": "### Instruction:\nWhat is DTW?\n\n### Response:\n", "completion": "Dynamic time warping."},
    {"prompt": "### Instruction:\nCount to three.\n\n### Response:\n", "completion": "one, two, three"},
    {"prompt": "### Instruction:\nOpposite of up?\n\n### Response:\n", "completion": "Down."},
]


# The options each baseline `kd_method` trains the tiny models with (`method_options` adds MinED's cache folder).
BASELINE_OPTIONS = {"dskd": {}, "uld": {"uld_top_k": 64}, "mined": {}, "multilevel_ot": {"ot_top_k": 16}}


def method_options(method, mined_cache_dir):
    options = dict(BASELINE_OPTIONS.get(method, {}))
    if method == "mined":
        options["mined_cache_dir"] = mined_cache_dir
    return options


def make_config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        dataloader_num_workers=0,
        max_length=64,
        max_prompt_length=32,
    )
    defaults.update(overrides)
    return DWAKDConfig(**defaults)


def make_trainer(tmp_path, student_family="llama", peft_config=None, rows=ROWS, **overrides):
    student_tokenizer, teacher_tokenizer = shared_tokenizers()
    student = tiny_causal_lm(student_tokenizer, family=student_family, hidden_size=16, seed=1)
    teacher = tiny_causal_lm(teacher_tokenizer, family="llama", hidden_size=24, seed=2)
    return DWAKDTrainer(
        model=student,
        teacher_model=teacher,
        args=make_config(tmp_path, **overrides),
        train_dataset=Dataset.from_list(rows),
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
        peft_config=peft_config,
    )


def clone_parameters(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# ---- files ---------------------------------------------------------------------------------------------------------


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_dskd_file(path, rows=ROWS):
    """`rows` (prompt/completion) as a DSKD-format training file (prompt/output)."""
    return write_jsonl(path, [{"prompt": row["prompt"], "output": row["completion"]} for row in rows])


def write_cpu_recipe(folder, **fields):
    """A recipe for a short CPU run on ROWS (written to `folder`/train.jsonl) with `fields`, as `folder`/recipe.yaml
    (JSON, which is YAML); returns the `--config` arguments."""
    recipe = {
        "dataset_files": [f"train={write_dskd_file(folder / 'train.jsonl')}"],
        "output_dir": str(folder / "out"),
        "max_length": 64,
        "max_prompt_length": 32,
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        **fields,
    }
    (folder / "recipe.yaml").write_text(json.dumps(recipe))
    return ["--config", str(folder / "recipe.yaml")]


# ---- pushing to the Hub, recorded instead -------------------------------------------------------------------------

# What `push_to_hub` uploads from a trainer's output folder: the student, its tokenizer and card, the projectors.
UPLOADED_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    PROJECTORS_NAME,
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.bin",
}


def record_hub_uploads(monkeypatch):
    """Make `push_to_hub` upload nothing; returns the list that receives each upload as a dict: `repo_id`, the
    uploaded file `names` (sorted), the model `card` and the `folder`."""
    import transformers.trainer as hf_trainer

    uploads = []

    class FakeHubApi:
        def upload_folder(self, folder_path, ignore_patterns=(), **kwargs):
            names = sorted(
                name
                for name in os.listdir(folder_path)
                if not any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns)
            )
            card = Path(folder_path, "README.md").read_text(encoding="utf-8")
            uploads.append(dict(repo_id=kwargs.get("repo_id"), names=names, card=card, folder=Path(folder_path)))

    monkeypatch.setattr(hf_trainer, "hf_api", lambda: FakeHubApi())
    monkeypatch.setattr(DWAKDTrainer, "init_hf_repo", lambda self, token=None, private=None: None)
    return uploads
