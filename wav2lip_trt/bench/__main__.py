"""``python -m wav2lip_trt.bench --child SPEC``: how ``run_bench`` starts each measured process."""

import sys

from .child import main

sys.exit(main(sys.argv[1:]))
