#!/bin/bash
# One prepared device check: CUDA training tests, throughput bench, end-to-end CLI on CUDA, NCCL DDP path.
# Run on the GPU machine from the repository root (about 4 minutes on one H200). Python packages missing there can
# be put in .whl/ as wheels (installed into /tmp/site first). The checks: an end-to-end CLI run on CUDA, the NCCL
# path (bench/nccl_one_gpu.py), the training tests with the GPU present, and bench/bench_train.py --gpu --quick.
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
T0=$(date +%s); el() { echo "## +$(( $(date +%s) - T0 )) s: $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch,cv2,numpy,sklearn,albumentations as A,simplejpeg; print('torch',torch.__version__,'cuda',torch.version.cuda,torch.cuda.is_available(),'bf16',torch.cuda.is_bf16_supported(),'cv2',cv2.__version__,'np',numpy.__version__,'sk',sklearn.__version__,'A',A.__version__, 'cpus', __import__('os').cpu_count())" || exit 1
python3 -c "import torch; from augexpand.train.loop import Runtime; rt=Runtime.create(torch.device('cuda'), True, True); print('amp', rt.amp_dtype, 'channels_last', rt.channels_last)"
W=/tmp/w; mkdir -p $W
el "1. end to end on CUDA"
timeout 90 python3 -m augexpand expand --recipe heavy --example $W/dst --val-fraction 0.25 --quiet --json > $W/expand.json; echo "expand rc $?"; python3 -c "import json;d=json.load(open('$W/expand.json'));print({k:d.get(k) for k in ('images_in','images_out','output_size','decode_scales','workers')})"
timeout 120 python3 -m augexpand train $W/dst --out $W/run --device cuda --epochs 8 --json > $W/train.json 2> $W/train.err; echo "train rc $?"; grep -i -E 'autocast|cuda|error' $W/train.err | head -5; python3 -c "import json;d=json.load(open('$W/train.json'));print({k:d[k] for k in list(d)[:40] if not isinstance(d[k],(list,dict))})"
timeout 60 python3 -m augexpand evaluate $W/run $W/dst/val --json > $W/eval.json; echo "evaluate rc $?"; python3 -c "import json;d=json.load(open('$W/eval.json'));print({k:d[k] for k in d if not isinstance(d[k],(list,dict))})"
cp $W/train.json $W/eval.json ${OUT:-/tmp}/ 2>/dev/null
el "2. NCCL DDP path (world size 1)"
timeout 90 python3 bench/nccl_one_gpu.py $W/dst $W/run_nccl 2>&1 | grep -v "^INFO: epoch" | tail -8
el "3. training tests with CUDA present (device auto)"
timeout 180 python3 -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning tests/test_train_loop.py tests/test_train_data.py tests/test_train_checkpoints.py tests/test_train_cli.py tests/test_train_defaults.py 2>&1 | tail -25
el "4. throughput: bench_train --gpu --quick"
timeout 150 python3 bench/bench_train.py --gpu --quick --epochs 4 --no-cache-epochs 1 --json ${OUT:-/tmp}/bench_train.json 2>&1 | tail -15
el done
