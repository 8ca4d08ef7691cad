"""The named pipelines: literal, commented lists of passes. Each pipeline is itself a pass."""

from __future__ import annotations

from qcompiler.pass_infra import Pipeline
from qcompiler.passes.batchnorm_to_affine import BatchNormToAffinePass
from qcompiler.passes.channel_affine_to_conv import ChannelAffineToConvPass
from qcompiler.passes.finalize_integer_model import FinalizeIntegerModelPass
from qcompiler.passes.fold_batchnorm import FoldBatchNormPass
from qcompiler.passes.fold_channel_affine import FoldChannelAffinePass
from qcompiler.passes.fold_constants import FoldConstantsPass
from qcompiler.passes.gemm_to_matmul import GemmToMatMulPass
from qcompiler.passes.initializers_as_constants import InitializersAsConstantsPass
from qcompiler.passes.insert_qdq import InsertQDQPass
from qcompiler.passes.integerize_activation_matmul import IntegerizeActivationMatMulPass
from qcompiler.passes.integerize_add import IntegerizeAddPass
from qcompiler.passes.integerize_concat import IntegerizeConcatPass
from qcompiler.passes.integerize_conv import IntegerizeConvPass
from qcompiler.passes.integerize_data_movement import IntegerizeDataMovementPass
from qcompiler.passes.integerize_lookup_table import IntegerizeLookupTablePass
from qcompiler.passes.integerize_matmul import IntegerizeMatMulPass
from qcompiler.passes.integerize_mul import IntegerizeMulPass
from qcompiler.passes.integerize_pooling import IntegerizePoolingPass
from qcompiler.passes.integerize_softmax import IntegerizeSoftmaxPass
from qcompiler.passes.name_nodes import NameNodesPass
from qcompiler.passes.quantize_weights import QuantizeWeightsPass
from qcompiler.passes.remove_identity_ops import RemoveIdentityOpsPass
from qcompiler.passes.remove_unused import RemoveUnusedPass
from qcompiler.passes.set_static_shapes import SetStaticShapesPass
from qcompiler.quant_plan import QParams

__all__ = ["normalize_pipeline", "quantize_pipeline", "integerize_pipeline"]


def normalize_pipeline(input_shapes: dict[str, tuple[int, ...]]) -> Pipeline:
    """Float model -> canonical float model with static shapes, ready for calibration."""
    return Pipeline(
        [
            NameNodesPass(),  # every node named: errors and report.json refer to nodes by name
            InitializersAsConstantsPass(),  # weights listed as graph inputs (IR < 4) are constants
            SetStaticShapesPass(input_shapes),  # static input shapes first: folding shape subgraphs needs them
            FoldConstantsPass(),  # Constant nodes, ConstantOfShape weights, Pad/Reshape shape subgraphs
            RemoveIdentityOpsPass(),  # Identity, inference Dropout
            GemmToMatMulPass(),  # one matmul form for quantization: MatMul(x, W[K,N]) + bias
            FoldBatchNormPass(),  # Conv + BN -> Conv
            BatchNormToAffinePass(),  # the other BNs (after Gemm, pre-activation) -> per-channel Mul + Add
            FoldChannelAffinePass(),  # Conv/MatMul + per-channel Mul/Add by constants -> Conv/MatMul
            ChannelAffineToConvPass(),  # remaining per-channel affine ops -> depthwise 1x1 Conv
            RemoveUnusedPass(),  # weights replaced by the folds above
            SetStaticShapesPass(),  # re-infer shapes of the rewritten graph
        ],
        name="normalize",
    )


def quantize_pipeline(params: dict[str, QParams]) -> Pipeline:
    """Canonical float model + activation parameters -> QDQ model (fake-quantized, runnable in onnxruntime)."""
    return Pipeline(
        [
            InsertQDQPass(params),  # Q/DQ on every activation point
            QuantizeWeightsPass(),  # int8 per-channel weights, int32 biases (needs the input DQ)
            RemoveUnusedPass(),  # the float weights
        ],
        name="quantize",
    )


def integerize_pipeline(mantissa_bits: int) -> Pipeline:
    """QDQ model -> integer-only model. Each pass rewrites one ``DQ -> op -> Q`` family; order is free
    except that the lookup-table pass must see ``x * Sigmoid(x)`` before the Mul pass does."""
    return Pipeline(
        [
            IntegerizeLookupTablePass(),  # elementwise functions, including x*sigmoid(x)
            IntegerizeConvPass(mantissa_bits),
            IntegerizeMatMulPass(mantissa_bits),
            IntegerizeActivationMatMulPass(mantissa_bits),  # Q·Kᵀ, A·V
            IntegerizeAddPass(mantissa_bits),
            IntegerizeMulPass(mantissa_bits),
            IntegerizePoolingPass(mantissa_bits),
            IntegerizeConcatPass(mantissa_bits),
            IntegerizeSoftmaxPass(),
            IntegerizeDataMovementPass(),
            FinalizeIntegerModelPass(),  # refuse leftovers, attach qc functions, drop dead values
        ],
        name="integerize",
    )
