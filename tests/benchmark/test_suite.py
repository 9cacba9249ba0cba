"""The GPU table's code, run tiny on the CPU: the suite, the sync counter, deferred metrics."""

import json

import pytest
import torch

from detectron2.utils.events import EventStorage

from ovseg.benchmark.suite import main as suite_main
from ovseg.benchmark.syncs import HostSyncCounter
from ovseg.engine.train_loop import OvsegSimpleTrainer


def test_suite_smoke_writes_the_table_and_profile(tmp_path):
    res = suite_main(
        ["--smoke", "--device", "cpu", "--only", "ZegCLIP", "--iters", "1", "--warmup", "0",
         "--shares-steps", "1", "--budget", "300", "--output-dir", str(tmp_path),
         "SOLVER.IMS_PER_BATCH", "2"]
    )  # fmt: skip
    row = res["rows"]["ZegCLIP toy ViT"]
    assert "error" not in row["train"], row["train"].get("traceback")
    assert "error" not in row["infer"], row["infer"].get("traceback")
    assert row["train"]["it_per_s"] > 0 and row["train"]["flops_per_iter"] > 0
    assert 0 < row["train"]["frozen_forward_share"] < 1
    assert "error" not in row["mapper"], row["mapper"].get("traceback")
    assert row["mapper"]["mapper_s_per_image"] > 0
    assert row["infer"]["whole"]["images_per_s"] > 0 and row["infer"]["slide"]["latency_s"] > 0
    # the toy's own window (suite.TOY_SLIDE), not the default 512 one padding a 64 x 85 image
    assert row["infer"]["slide_window"] == [64, 64] and row["infer"]["slide_stride"] == [48, 48]
    batched = res["rows"]["ZegCLIP toy ViT inference batch 4"]
    assert "train" not in batched and batched["infer"]["batch"] == 4
    assert batched["infer"]["whole"]["images_per_s"] > 0
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert saved["rows"].keys() == res["rows"].keys()
    table = (tmp_path / "table.md").read_text()
    assert "ZegCLIP toy ViT" in table and "loader % of step" in table
    assert "| ZegCLIP toy ViT inference batch 4 | 4 x " in table
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert len(profile["top"]) == 15 and profile["top"][0]["self_cpu_us"] > 0
    # on the CPU no device event: the device's busy time is 0, the wall's is not
    assert profile["wall_ms_per_step"] > 0 and profile["device_ms_per_step"] == 0
    assert (
        "ms of wall time and 0.0 ms of device time per step"
        in (tmp_path / "profile.txt").read_text()
    )


@pytest.fixture
def suite_calls(monkeypatch):
    """The suite with its rows and profile stubbed: the names it runs, in its order."""
    from ovseg.benchmark import suite

    calls = []
    monkeypatch.setattr(suite, "_run_row", lambda item, *_: calls.append(item[0]) or {})
    monkeypatch.setattr(suite, "_profile", lambda config, a, _: calls.append("profile") or {})
    return calls


def test_the_profile_follows_every_students_first_row_and_compiles_on_cuda(tmp_path, suite_calls):
    from ovseg.benchmark import suite
    from ovseg.benchmark.suite_items import GOAL_ROWS

    calls = suite_calls
    suite.main(["--device", "cpu", "--only", "ZegCLIP", "MaskCLIP+", "--output-dir",
                str(tmp_path)])  # fmt: skip
    assert calls[:3] == list(GOAL_ROWS)
    before = calls[3 : calls.index("profile")]  # each MaskCLIP+ config's first row
    assert before == [
        "MaskCLIP+ RN50>R101 teacher in loop",
        "MaskCLIP+ ViT-B/16>R50 annotation-free",
    ]
    after = calls[calls.index("profile") + 1 :]
    assert "MaskCLIP+ RN50>R101 store" in after and "ZegCLIP ViT-B/16 eager loss" in after
    # the compiled variants run last, ZegCLIP's compiled inference among them
    assert after[-2:] == [
        "ZegCLIP ViT-B/16 compiled",
        "ZegCLIP ViT-B/16 inference batch 16 compiled CUDA graphs",
    ]
    # on CUDA the profile is the goal row's work compiled (its own budget), on the CPU eager
    cuda, cpu = suite._profile_opts("cuda:0"), suite._profile_opts("cpu")
    assert (
        dict(zip(cuda[::2], cuda[1::2]))
        == {"MODEL.COMPILE": "True", "MODEL.CLIP.FROZEN_DTYPE": "bfloat16"}
        and cpu == ()
    )


def test_no_profile_without_zegclip_or_with_no_profile(tmp_path, suite_calls):
    from ovseg.benchmark import suite

    calls = suite_calls
    suite.main(["--device", "cpu", "--only", "ZegCLIP", "--no-profile", "--output-dir",
                str(tmp_path)])  # fmt: skip
    assert calls and "profile" not in calls
    calls.clear()  # no ZegCLIP row: the profile (a ZegCLIP step) has no config to run
    suite.main(["--device", "cpu", "--only", "MaskCLIP RN50", "--output-dir", str(tmp_path)])
    assert calls == ["MaskCLIP RN50"]


def test_sync_counter_sees_reads_and_data_dependent_shapes():
    x = torch.randn(50)
    with HostSyncCounter() as counter:
        x[x > 0]
        float(x.sum())
        x.nonzero()
        (x * 2).mean()
    assert counter.counts == {"index[bool]": 1, "_local_scalar_dense": 1, "nonzero": 1}


def _trainer(period):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return {"loss_a": self.m(x).pow(2).mean(), "loss_b": self.m(x).abs().mean()}

    data = iter([torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(7)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return OvsegSimpleTrainer(Wrapped(), data, opt, metrics_period=period)


def test_deferred_metrics_match_per_step_metrics_and_skip_reads():
    histories = {}
    for period in (1, 3):
        trainer = _trainer(period)
        trainer.max_iter = 7
        with EventStorage(0) as storage:
            for i in range(7):
                storage.iter = i
                with HostSyncCounter() as counter:
                    trainer.run_step()
                if period == 3 and i in (0, 1, 3):  # not a read-back step
                    assert counter.counts["_local_scalar_dense"] == 0
            histories[period] = {
                k: storage.history(k).values() for k in ("total_loss", "loss_a", "loss_b")
            }
    assert histories[1] == histories[3]
    assert [it for _, it in histories[3]["total_loss"]] == list(range(7))


def test_deferred_metrics_survive_the_losses_memory_being_reused():
    """A CUDA graph (MODEL.COMPILE_MODE reduce-overhead) writes its next replay's losses into
    the memory of this step's: the pending metrics must be their own copies."""
    histories = {}
    for overwrite in (False, True):
        trainer = _trainer(3)
        trainer.max_iter = 7
        forward = trainer.model.forward
        outputs = []
        trainer.model.forward = lambda x, f=forward, out=outputs: out.append(f(x)) or out[-1]
        with EventStorage(0) as storage:
            for i in range(7):
                storage.iter = i
                trainer.run_step()
                for v in outputs[-1].values() if overwrite else ():
                    v.detach().fill_(-1.0)  # what the next replay does to the graph's output
            histories[overwrite] = {k: storage.history(k).values() for k in ("loss_a", "loss_b")}
    assert histories[True] == histories[False]
    assert all(v >= 0 for v, _ in histories[True]["loss_a"])


def test_the_goal_rows_then_every_students_first_row_run_before_the_variants():
    """A deadline (tools/gpu_check.sh's time limit) cuts the suite's last rows: those must be
    variants, never the goal or a student's only row. The table keeps the items' order."""
    from ovseg.benchmark.suite_items import GOAL_ROWS, GPU_ITEMS, _run_order, _student

    order = [i[0] if i else None for i in _run_order(GPU_ITEMS)]
    assert sorted(n for n in order if n) == sorted(i[0] for i in GPU_ITEMS)
    assert order[:3] == list(GOAL_ROWS) and order.count(None) == 1  # one profile
    head = order[: order.index(None)]
    configs = {i[1]: i[0] for i in reversed(GPU_ITEMS)}  # config -> its first row
    assert {i[1] for i in GPU_ITEMS if i[0] in head} == configs.keys()  # every config, once
    assert len(head) == len(configs) + 2  # ZegCLIP's three goal rows share one config
    # after the goal, one row per student (meta-architecture), then the other configs
    students = {_student(c) for c in configs}
    assert len(students) == 7 and "XPMStudent" in students and "MaskCLIP" in students
    arch = {i[0]: _student(i[1]) for i in GPU_ITEMS}
    after_goal = [arch[n] for n in head[3 : 3 + len(students) - 1]]
    assert sorted(after_goal + ["ZegCLIP"]) == sorted(students)
    assert [n for n in head if n in ("LSeg ViT-L/16 (paper)", "LSeg R101")] == [
        "LSeg ViT-L/16 (paper)",
        "LSeg R101",
    ]  # the items' order within
    tail = order[order.index(None) + 1 :]
    first_compiled = next(k for k, n in enumerate(tail) if "compiled" in n)
    assert all("compiled" in n for n in tail[first_compiled:]) and first_compiled > 0
    assert tail[-1] == "ZegCLIP ViT-B/16 inference batch 16 compiled CUDA graphs"


def test_the_device_time_counts_device_events_once():
    # an operator's "self device time" is its kernels' again; torch's table total leaves
    # operators and user annotations out, and so does the profile's device time per step
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from ovseg.benchmark.profile import _device_us

    def event(device, us, annotation=False):
        return SimpleNamespace(
            device_type=device, self_device_time_total=us, is_user_annotation=annotation
        )

    cuda = DeviceType.CUDA
    events = [event(DeviceType.CPU, 300.0), event(cuda, 200.0), event(cuda, 100.0),
              event(cuda, 50.0, annotation=True)]  # fmt: skip
    assert _device_us(SimpleNamespace(key_averages=lambda: events)) == 300.0


def test_training_rows_of_students_with_a_loss_fn_take_the_compile_budget(tmp_path):
    """MODEL.COMPILE_LOSS "auto" compiles a declared ``loss_fn`` in a CUDA row's first step:
    those rows (not an eager-loss row, not inference) run on the compile budget, and
    LOSS_FN_STUDENTS names exactly the students that declare one."""
    from ovseg_testing.models import tiny_lseg, tiny_maskclip_plus, tiny_zegclip

    from ovseg.benchmark.suite_items import GPU_ITEMS, LOSS_FN_STUDENTS, _compiles

    models = {
        "LSeg": tiny_lseg(tmp_path),
        "ZegCLIP": tiny_zegclip(tmp_path),
        "MaskCLIP+": tiny_maskclip_plus(tmp_path),
    }
    for name, model in models.items():
        assert hasattr(model, "loss_fn") == name.startswith(LOSS_FN_STUDENTS), name
    rows = {item[0]: _compiles(item) for item in GPU_ITEMS}
    assert rows["LSeg R101"] and rows["LSeg ViT-L/16 (paper)"] and rows["ZegCLIP ViT-B/16"]
    assert not rows["ZegCLIP ViT-B/16 eager loss"]
    assert not rows["ZegCLIP ViT-B/16 inference batch 16"]
    assert not rows["MaskCLIP+ RN50>R101 store"]
