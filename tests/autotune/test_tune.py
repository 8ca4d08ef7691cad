"""qc tune's parts: a searched MetaSchedule schedule kept in TVM's JSON database is applied by the build
(recorded in the library info) and bit-exact; refusals. The whole ``qc tune`` run is tested from the command
line (tests/cli/test_cli_tune.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

import qcompiler
from qcompiler.config import CompileConfig
from qcompiler.driver import quantize_model
from qcompiler.errors import QcError, TargetError
from qcompiler.targets import get_target, tuning
from qcompiler.targets._build import _apply_database, fusion_passes
from qcompiler.targets.cpu_schedule import TUNED_ATTR
from qcompiler.targets.relax_lowering import lower
from tests.e2e.zoo import REPO
from tests.targets.targets_testkit import assert_bit_exact, random_feeds

CNN = REPO / "examples" / "fashion_mnist" / "cnn.onnx"
SHAPES = {"input": (1, 1, 28, 28)}


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    from examples.fashion_mnist import data

    images, _ = data.load_split("train")
    path = tmp_path_factory.mktemp("tune") / "calib.npz"
    np.savez(path, input=data.preprocess(images[:64]))
    return path


@pytest.mark.slow
def test_a_tuned_schedule_is_applied_recorded_and_bit_exact(tmp_path, calib):
    """A searched schedule of one kernel, kept by hand (whatever its speed): the build applies it instead of
    the default schedule, the library info names the database, and the outputs stay bit-exact."""
    quantized = quantize_model(CNN, str(calib), CompileConfig(input_shapes=SHAPES))
    region = quantized.region()
    target = get_target("x86")
    name, func = next(iter(sorted(tuning.generic_functions(tuning.fused_module(region, target)).items(), key=lambda kv: kv[0])))
    record = tuning.tune_function(func, target.tvm_target(), tmp_path / "search", trials=8)
    assert record is not None
    db = tmp_path / "db"
    tuning.keep_record(db, func, record, target.tvm_target())
    assert tuning.has_record(db, func, target.tvm_target()) and tuning.record_count(db) == 1

    fused = tvm.transform.Sequential([*fusion_passes(), _apply_database(db, target.tvm_target())])(lower(region,
                                                                                                       target.kernels()))
    tuned = [gv.name_hint for gv, f in fused.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get(TUNED_ATTR, False)]
    assert tuned == [name]

    tuned_target = get_target("x86", tuning_db=str(db))
    info = tuned_target.compile(region, tmp_path / "build")
    assert info["tuning_db"] == {"path": str(db), "sha256": tuning.database_digest(db), "records": 1}
    module = tuned_target.load(tmp_path / "build", info)
    for seed in range(3):
        assert_bit_exact(region, module, random_feeds(region, seed=seed))


def test_a_missing_database_is_refused_by_name(tmp_path):
    with pytest.raises(TargetError, match=r"tuning_db=.*holds no tuning database.*qc tune"):
        get_target("x86", tuning_db=str(tmp_path / "nothing"))


def test_tune_refuses_targets_without_tunable_schedules(tmp_path, calib):
    with pytest.raises(QcError, match="kernels are timed for --target x86 and aarch64"):
        qcompiler.tune(CNN, calib, tmp_path / "db", CompileConfig(target="cortex-m4"), trials=1)
    with pytest.raises(QcError, match="must be positive"):
        qcompiler.tune(CNN, calib, tmp_path / "db", trials=0)
    assert not (tmp_path / "db").exists()
