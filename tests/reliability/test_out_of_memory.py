"""Running out of memory ends a job in one line naming what to lower and what is kept: a
DataLoader worker killed (as the out-of-memory killer does: SIGKILL), an allocation failing in
the forward (MemoryError, torch's CPU allocator, torch.OutOfMemoryError), in training,
--eval-only and pseudo-label generation; the error is never swallowed (exit status 2)."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import torch
from ovseg_testing import (
    CONFIGS,
    cpu_opts,
    registered_ade20k,
    run_main,
    run_patched,
    small_semfpn_opts,
    write_ade20k_fixture,
)
from ovseg_testing.logs import records

from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY

from ovseg.engine import Trainer
from ovseg.engine.defaults import load_config
from ovseg.utils import io
from ovseg.utils.resources import OutOfResourcesError, out_of_resources

CONFIG = CONFIGS / "ade20k/baseline/semfpn_r18_80k_bs16.yaml"
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 123456789 bytes. Error code 12 (Cannot allocate memory)"
)


def _children() -> list[int]:
    tasks = os.listdir("/proc/self/task")
    return [int(p) for t in tasks for p in open(f"/proc/self/task/{t}/children").read().split()]


class _KillWorker(HookBase):
    """SIGKILL a DataLoader worker after step ``at``, as the out-of-memory killer would."""

    def __init__(self, at: int, before: set):
        self.at = at
        # children the test process had before the trainer (e.g. a multiprocessing resource
        # tracker an earlier test in this pytest worker started): not the loader's workers
        self.before = before

    def after_step(self):
        if self.trainer.iter == self.at:
            workers = sorted(set(_children()) - self.before)
            assert workers, "no DataLoader worker started"
            os.kill(workers[0], signal.SIGKILL)


def _trainer(out, *extra) -> Trainer:
    opts = small_semfpn_opts(out, 8, *extra)
    trainer = Trainer(load_config(str(CONFIG), opts))
    trainer.resume_or_load(resume=False)
    return trainer


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds workers in /proc")
@pytest.mark.usefixtures("one_torch_thread", "small_ade20k")
def test_a_killed_loader_worker_ends_training_in_one_line(tmp_path):
    out = tmp_path / "run"
    before = set(_children())
    trainer = _trainer(out, "DATALOADER.NUM_WORKERS", "1")
    trainer.register_hooks([_KillWorker(at=4, before=before)])
    with records("detectron2.engine.train_loop", logging.ERROR) as logged:
        with pytest.raises(OutOfResourcesError) as info:
            trainer.train()
    message = str(info.value)
    assert message.startswith("training stopped: a DataLoader worker (pid "), message
    assert "most likely by the out-of-memory killer: lower DATALOADER.NUM_WORKERS (1;" in message
    assert "SOLVER.IMS_PER_BATCH (2) or raise SOLVER.ACCUMULATE_STEPS (1" in message
    assert f"last checkpoint {out / 'model_0000003.pth'} is kept: --resume" in message
    # detectron2's log of it: one line, no traceback
    assert logged and logged[-1].exc_info is None
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert not [n for n in os.listdir(out) if n.startswith(io.TMP_PREFIX)]


@pytest.mark.usefixtures("one_torch_thread", "small_ade20k")
def test_an_allocation_failing_in_the_forward_ends_training_in_one_line(tmp_path, monkeypatch):
    trainer = _trainer(tmp_path / "run")
    model = trainer.model

    def forward(batched_inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(model, "forward", forward)
    with records("detectron2.engine.train_loop", logging.ERROR) as logged:
        with pytest.raises(OutOfResourcesError) as info:
            trainer.train()
    # detectron2's log keeps where memory ran out (console and log.txt), as before
    assert logged and isinstance(logged[-1].exc_info[1], torch.OutOfMemoryError)
    message = str(info.value)
    assert message.startswith("training ran out of memory (OutOfMemoryError: CUDA out of memory")
    assert "SOLVER.AMP.ENABLED True (now False)" in message
    assert "MODEL.CLIP" not in message  # detectron2's SemanticSegmentor holds no CLIP
    assert message.endswith("No checkpoint of this run was saved yet: --resume starts it again")
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)  # kept for log files


def test_what_counts_as_out_of_memory():
    cfg = load_config(str(CONFIG), ["INPUT.CROP.ENABLED", "True"])
    assert "INPUT.CROP.SIZE" in str(out_of_resources(MemoryError(), cfg, "training"))
    error = out_of_resources(RuntimeError(CPU_OOM), cfg, "evaluation", "Nothing is kept")
    assert str(error).startswith("evaluation ran out of memory (RuntimeError: [enforce fail")
    assert "TEST.SLIDE_WINDOW" in str(error) and str(error).endswith(". Nothing is kept")
    exited = RuntimeError("DataLoader worker (pid(s) 12, 13) exited unexpectedly")
    assert "(pid 12, 13) exited unexpectedly, most" in str(out_of_resources(exited, cfg, "x"))
    assert out_of_resources(RuntimeError("shape mismatch"), cfg, "training") is None
    assert out_of_resources(ValueError("out of memory"), cfg, "training") is None


def test_a_switch_already_at_its_lower_memory_value_is_not_advised():
    opts = ["SOLVER.AMP.ENABLED", "True", "MODEL.CLIP.FROZEN_DTYPE", "bfloat16"]
    cfg = load_config(str(CONFIG), [*opts, "MODEL.CLIP.PRECISION", "fp16"])
    training = str(out_of_resources(MemoryError(), cfg, "training"))
    assert training.endswith("forwards) or a smaller INPUT.CROP.SIZE (512, 512)."), training
    assert "AMP" not in training and "FROZEN_DTYPE" not in training
    evaluation = str(out_of_resources(MemoryError(), cfg, "evaluation"))
    assert "PRECISION" not in evaluation and "FROZEN_DTYPE" not in evaluation, evaluation
    assert evaluation.endswith(
        "TEST.INFERENCE_MODE slide with a small TEST.SLIDE_WINDOW (512, 512)."
    ), evaluation
    # windows stacked into one forward hold their scores together: one at a time is advised
    slide = ["TEST.INFERENCE_MODE", "slide"]
    for per_forward, advised in ((1, False), (3, True)):
        cfg = load_config(str(CONFIG), [*slide, "TEST.SLIDE_WINDOWS_PER_FORWARD", str(per_forward)])
        evaluation = str(out_of_resources(MemoryError(), cfg, "evaluation"))
        assert ("use TEST.SLIDE_WINDOWS_PER_FORWARD 1 (now 3)" in evaluation) == advised


TOOL = "tools/generate_pseudo_labels.py"


@pytest.mark.usefixtures("one_torch_thread")
def test_pseudo_labelling_names_the_file_or_the_memory_in_one_line(tmp_path, capsys, monkeypatch):
    datasets = write_ade20k_fixture(tmp_path / "datasets", n_train=2, n_val=1)
    image = datasets / "ADEChallengeData2016/images/training/ADE_train_00000001.jpg"
    image.write_bytes(image.read_bytes()[:-200])  # truncated
    argv = [
        "--config-file", "configs/ade20k/maskclip/maskclip_vitb16_bs1.yaml",
        "--dataset", "ade20k_sem_seg_train", "--output", str(tmp_path / "store"), "--no-progress",
        "MODEL.CLIP.MODEL_NAME", "configs/clip/tiny_vit.json", "MODEL.CLIP.PRETRAINED", "",
        "MODEL.CLIP.TEMPLATES", "single", "MODEL.CLIP.CACHE_DIR", str(tmp_path / "cache"),
        "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "1000",
    ]  # fmt: skip
    with registered_ade20k(datasets):
        assert run_main(TOOL, argv) == 2
    err = capsys.readouterr().err
    assert f"generate_pseudo_labels.py: error: Cannot decode image file '{image}'" in err, err
    assert "It is an image of dataset 'ade20k_sem_seg_train': check the dataset's download" in err
    assert "Traceback" not in err
    image.unlink()  # removed from the dataset; into a new store: memory runs out
    argv[argv.index("--output") + 1] = str(tmp_path / "store2")
    monkeypatch.setattr(META_ARCH_REGISTRY.get("MaskCLIP"), "forward", _raise_memory_error)
    with registered_ade20k(datasets):
        assert run_main(TOOL, argv) == 2
    err = capsys.readouterr().err
    error = "generate_pseudo_labels.py: error: pseudo-labelling ran out of memory (MemoryError): "
    assert error + "lower INPUT.MIN_SIZE_TEST (48)" in err, err
    # MaskCLIP reads them all: its frozen CLIP tower runs the labels
    for setting in ("TEST.INFERENCE_MODE slide", "PRECISION bf16 (now 'fp32')", "FROZEN_DTYPE"):
        assert setting in err, (setting, err)
    assert "The images labelled so far are kept: re-running the command labels the rest" in err


def _raise_memory_error(self, batched_inputs):
    raise MemoryError


def test_eval_only_reports_running_out_of_memory_in_one_line(tmp_path):
    # --eval-only whose model's forward finds the CPU allocator out of memory
    patch = (
        "from detectron2.modeling.meta_arch import SemanticSegmentor\n"
        f"def oom(self, batched_inputs): raise RuntimeError({CPU_OOM!r})\n"
        "SemanticSegmentor.forward = oom\n"
    )
    opts = cpu_opts("SemanticSegmentor", tmp_path / "cache")
    opts += ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path / "run")]
    datasets = write_ade20k_fixture(tmp_path / "datasets", n_train=1, n_val=1)
    args = ["--config-file", str(CONFIG), "--eval-only", *opts]
    proc = run_patched(patch, "train_net.py", *args, datasets=datasets)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = "train_net.py: error: evaluation ran out of memory (RuntimeError: [enforce fail at"
    assert error in proc.stderr, proc.stderr[-3000:]
    assert "lower INPUT.MIN_SIZE_TEST" in proc.stderr
    # settings SemanticSegmentor reads not (no CLIP; slide refused by the config check)
    assert "MODEL.CLIP" not in proc.stderr and "SLIDE" not in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
