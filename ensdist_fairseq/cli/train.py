"""`ensdist-train`: fairseq-train that honours --bf16 on a GPU or CPU (fairseq 0.12 turns --bf16 into --tpu).

fairseq 0.12's option post-processing sets `args.tpu = True` whenever --bf16 is given, so plain
`fairseq-train --bf16` asks for torch_xla and fails on CUDA and on the CPU alike ("'NoneType'
object has no attribute 'xla_device'"). Its trainer supports bfloat16 without a TPU (model in
bfloat16, FP16Optimizer with float32 master weights, no loss scaling); only the flag is wired to
the TPU. This runs fairseq-train's own main() with the same arguments, keeping --tpu only when
it was asked for:

    ensdist-train DATA --user-dir "$(ensdist-path)" ... --bf16

Every other argument is fairseq-train's; without --bf16 it is fairseq-train.
"""

import logging
import os
import sys

# fairseq-train's own log format, set before fairseq is imported: fairseq_cli/train.py does
# this at its top, which is a no-op when an earlier import already configured the root logger.
logging.basicConfig(
    format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
    datefmt="%Y-%m-%d %H:%M:%S",
    level=os.environ.get("LOGLEVEL", "INFO").upper(),
    stream=sys.stdout,
)

from fairseq import options  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402
from fairseq.distributed import utils as distributed_utils  # noqa: E402
from fairseq_cli.train import main as fairseq_train_main  # noqa: E402

from ensdist_fairseq import register_with_fairseq  # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # This package is imported before fairseq here, so --user-dir would find it already loaded
    # and register nothing: register the task, criterion and models explicitly.
    register_with_fairseq()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    if args.bf16 and "--tpu" not in argv:
        args.tpu = False
    distributed_utils.call_main(convert_namespace_to_omegaconf(args), fairseq_train_main)


if __name__ == "__main__":
    main()
