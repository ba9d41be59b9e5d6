#!/usr/bin/env bash
# The GPU measurements still owed by open issues, one stage per device call (each fits the
# 10-minute limit of one call; results and logs land in $OUT). From the repository root:
#
#   run(command="bash benchmarks/gpu_session.sh tuner-a", carry=[".whl"])
#
# .whl/ holds wheels for the GPU machine's Python (3.12) that it lacks (pydantic and its deps,
# platformdirs; openai for tests/ai): `pip download --python-version 3.12 --only-binary :all: -d .whl pydantic platformdirs openai`
# (then remove typing_extensions from .whl: the machine's own is newer).
# Stages, most important first:
#   first                        #19 managed memory + #13 --explain of a GPU tuning run + tuner-a
#   next                         the cases the seventh session's changes touch (9 min)
#   verify                       the cases the H100 run of 2026-12-05 missed + Buffer GPU tests (5 min)
#   mini                         the --explain run and two product picks (about 4 minutes)
#   tuner-a / tuner-b / tuner-c  #13: product pick vs oracle, GPU suite + the issue's extra cases
#   sweep                        #20: width sweep through the product path vs eager / torch.compile
#   buffers                      #19: 5-op chain, host round trips vs uhop.Buffer (copies, managed)
#   compile                      #16: torch.compile(backend="uhop") vs eager / compile, bf16
#   rows                         #20: every long-row config timed (row_variants.py) + ncu_rows.py
#   eighth                       the eighth session's unmeasured changes: CUDA graph runner's replay
#                                check + vendor-first regions (GPU tests, 3 models), shifted weight
#                                tables on odd widths (product picks), about 9 minutes
#   forms                        #20: elementwise chains with broadcast inputs, reductions and mixed
#                                input dtypes (sweep, product path vs eager / torch.compile)
#   ninth                        #16: GPT-2 and Llama blocks cold then warm store, with kernel tables
#                                (tanh-GELU epilogue, activations and norms left to Inductor), ~9 min
#   tenth                        what eighth and forms still owe: GPU tests, ResNet, odd-width picks,
#                                elementwise forms, ~9 min (run in parts on the H100, 2026-12-06)
#   eleventh                     elementwise forms after the rowsum max fix, the tuner cases the H100 run
#                                of 2026-12-06 did not reach, GPU tests, ~8 min
#   twelfth                      ResNet with tune_rest (cold, warm), GPU tests, elementwise forms, ~9 min
#   thirteenth                   ResNet with convs left to Inductor (cold, warm), GPU tests, the ResNet conv
#                                through uhop.ops in both layouts, ~8 min
#   gated                        #16: the gated-MLP op/region: GPU tests, product picks, a d768 Llama-layout block
#                                cold then warm, ~7 min
#   cuda                         #20: the CUDA cluster row kernels: GPU tests, then every config next to Triton's
#                                split (row_variants.py --cuda), ~6 min
#   rows-product                 #20: the row ops' product picks (softmax, rmsnorm, layernorm sweep cases, no
#                                torch.compile) with the CUDA backend in the search, GPU tests first, ~5 min
#   twentieth                    #20: the cluster row kernels' last partial wave (tail launches, at e719fdc)
#   fifteenth                    the fifteenth session's checks: CUDA row GPU tests, launch overhead with the
#                                cluster launcher, then tuner-a (the memory-bound product picks), ~9 min
#   pipe                         #20: the bulk-copy pipeline row kernels: GPU tests, then every config next to
#                                the product's candidates (row_variants.py --pipe), ~8 min
#   twentyseventh                the CUDA row kernels' GPU tests, the pipe study (H200 only), pipe-product, ~8 min
#   twentyninth                  GPU tests of the twenty-eighth session's row changes, then pipe-product, ~9 min
#   gqa                          #16: grouped-query attention, GPU tests and the product path vs SDPA, ~3 min
#   pipe-product                 #20: the sweep's row cases of 4096-50257 through the product path with pipe offered
#   ncu-cluster                  #20: Nsight Compute on the cluster kernels at 2670 x 50257 (why layernorm is at 80%)
#   h200                         on an H200, first: the product sweep (#20) and tuner-a (#13) in one call, ~9 min
#   logsm                        log-softmax as an op: GPU tests, the sweep's log-softmax cases (product path), ~5 min
#   h200b                        on an H200, second: the bench GPU test, then tuner-b and tuner-c, shorter, ~9 min
#   nineteenth                   #20: rowsum at odd widths (GPU tests, A/B vs the old generator), softmax 11008 and
#                                the elementwise cases through the product path, ~6 min
#   seventeenth                  Triton / CUDA GPU tests (direct launches now for GEMM, attention, conv, gated MLP
#                                too), their host cost direct vs JIT, ~4 min
#   sixteenth                    direct Triton launches + repacked CUDA launches: GPU tests, launch overhead, ~3 min
#   llama-cg                     #16: the Llama block with and without UHOP's CUDA graphs next to compile /
#                                reduce-overhead, kernel tables, the horizontal-fusion probe, ~6 min
# On an H200 (the card issues #13 and #20 are judged on), most important first: h200 (sweep + tuner-a
# in one call), or sweep, tuner-a,
# then ninth (the three models), tuner-b, tuner-c, gated (the gated-MLP op and region on the H200).
# Done on an H200 in the twenty-sixth session: h200, h200b (conv2d apart), the GPT-2 and Llama blocks
# (ninth with NINTH_MODELS), logsm's sweep; in the twenty-eighth: twentyeighth (the row and rowsum
# studies, the pipe kernels' first H200 study). Still owed there, first: `twentyninth` (the pipe kernels in
# clusters for rows of 151936-262144, and the twenty-eighth session's GPU tests; it covers `pipe-product`'s
# long rows; run on an H100 in the thirtieth session: tests pass, the clusters' pipes lose at 262144),
# `gqa` (run on the H100 too), then: `pipe-product` (the pipe kernels,
# layernorm's included, through the product path; `pipe-mini` with little time), `h200` again (the
# whole sweep after the twenty-eighth session's changes), `NINTH_MODELS="resnet --batch 64" bash ... ninth`,
# then `rows` and `ncu-cluster` (rows of 151936-262144 at 65-78% of the H200's copy).
# Two stages in one call: the tuner stages take STOP_S (start no case after it, default 400) and
# LIMIT_S (kill after it, default 570), ROUNDS (paired re-timing rounds, default 7 as in earlier GPU runs), e.g. `bash ... buffers && STOP_S=300 LIMIT_S=470 bash ... tuner-a`.
set -u
stage=${1:?"stage: twentyninth | gqa | pipe-mini | pipe-product-short | twentyeighth | twentyseventh | pipe | pipe-product | h200 | h200b | logsm | nineteenth | seventeenth | ncu-cluster | first | cuda | rows-product | fifteenth | sixteenth | next | eighth | ninth | tenth | eleventh | twelfth | thirteenth | llama-cg | gated | forms | verify | mini | tuner-a | tuner-b | tuner-c | sweep | buffers | compile | rows"}
OUT=${OUT:-/tmp/uhop-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >"$OUT/pip.log" 2>&1 || { echo "wheel install failed: see pip.log"; exit 1; }
export PYTHONPATH=$PWD:/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/gpu.csv" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >"$OUT/versions.txt" 2>&1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE 'h100|h200|a100|b200' | tr A-Z a-z)
gpu=${gpu:-gpu}  # output names say which card ran them (the tuner-* stage names once said h200 on an H100)
tvo() { timeout "${LIMIT_S:-570}" python3 benchmarks/tuner_vs_oracle.py --device cuda:0 --stop-s "${STOP_S:-400}" --rounds "${ROUNDS:-7}" --only "$1" --out "$OUT/$2" 2>&1 | tail -40; }
case "$stage" in
  tuner-a) tvo softmax,layernorm,rmsnorm,elementwise,ew_gelu_mul_64m,softmax_gpt2_vocab tuner_vs_oracle_${gpu}_a.json ;;
  tuner-b) tvo gemm_8192,gemm_4096,gemm_1024,gemm_misaligned,gemm_skinny,gemm_short_k tuner_vs_oracle_${gpu}_b.json ;;
  tuner-c) tvo gemm_llm_mlp,gemm_fp32,gemm_bias_gelu,attention,attention_causal,conv2d tuner_vs_oracle_${gpu}_c.json ;;
  forms) timeout 420 python3 benchmarks/width_sweep.py --only elementwise --deadline-s 330 --stop-s 360 \
      --out "$OUT/width_sweep_${gpu}_forms.json" 2>&1 | tail -12 ;;
  sweep) timeout 570 python3 benchmarks/width_sweep.py --deadline-s 420 --stop-s 480 --out "$OUT/width_sweep_${gpu}_product.json" 2>&1 | tail -40 ;;
  buffers) timeout 570 python3 benchmarks/buffer_chain.py --json "$OUT/buffer_chain_${gpu}.json" 2>&1 | tail -40 ;;
  first)  # the checks owed since the fifth session, in one call: managed memory (#19), where a GPU
          # tuning run's time goes (#13), then the memory-bound product picks (#13)
    timeout 90 python3 benchmarks/buffer_chain.py --json "$OUT/buffer_chain_${gpu}.json" 2>&1 | tail -12
    UHOP_HOME=$(mktemp -d) timeout 60 python3 -m uhop tune softmax --shape 32768x4096 --dtype bfloat16 \
      --device cuda:0 --explain 2>&1 | tail -45 | tee "$OUT/explain_softmax.txt"
    STOP_S=${STOP_S:-250} LIMIT_S=${LIMIT_S:-380} tvo softmax,layernorm,rmsnorm,elementwise,ew_gelu_mul_64m,softmax_gpt2_vocab \
      tuner_vs_oracle_${gpu}_a.json ;;
  mini)  # when little device time is left: where a GPU tuning run's time goes, and two product picks
    UHOP_HOME=$(mktemp -d) timeout 60 python3 -m uhop tune softmax --shape 32768x4096 --dtype bfloat16 \
      --device cuda:0 --explain 2>&1 | tail -45 | tee "$OUT/explain_softmax.txt"
    STOP_S=${STOP_S:-60} LIMIT_S=${LIMIT_S:-150} tvo softmax,layernorm tuner_vs_oracle_${gpu}_mini.json ;;
  twentyeighth)  # the rowsum kernels' unmasked loop and approx candidate, the softmax row kernel's fewer
                 # instructions (GPU tests, then studies against the code before: .gpu-old_ew.py and
                 # .gpu-old_rowops.py from `git show 4e8dc62~:...`, carried), then what twentyseventh owes, ~9 min
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_gpu.py -k "elementwise or softmax or row" \
      2>&1 | tail -6 | tee "$OUT/test_triton_elementwise_gpu.txt"
    OLD_ROWOPS=.gpu-old_rowops.py OUT=$OUT timeout 150 python3 benchmarks/diagnosis/twentyeighth_rows.py 2>&1 | grep -v Warning | tail -10
    OLD_EW=.gpu-old_ew.py OUT=$OUT timeout 100 python3 benchmarks/diagnosis/twentyeighth_rowsum.py 2>&1 | grep -v Warning | tail -9
    bash "$0" twentyseventh ;;
  twentyseventh)  # GPU tests of both CUDA row kernels (-inf rows, pipe, shared finishing code), then the pipe study:
    # on an H200 its first measurement there, on an H100 the norms with their weights in shared memory
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_pipe_gpu.py tests/gpu/test_cuda_rows_gpu.py \
      2>&1 | tail -8 | tee "$OUT/test_cuda_row_kernels_gpu.txt"
    if [ "$gpu" = h200 ]; then
      timeout 130 python3 benchmarks/row_variants.py --pipe --only 11008,50257 --deadline-s 100 \
        --out "$OUT/row_variants_pipe_${gpu}.json" 2>&1 | tail -40
    else  # the H100 ran pipe-product at 320002b
      timeout 80 python3 benchmarks/row_variants.py --pipe --only 11008 --deadline-s 60 \
        --out "$OUT/row_variants_pipe_wsm_${gpu}.json" 2>&1 | tail -30
    fi ;;
  pipe)  # the bulk-copy pipeline row kernels (uhop.backends.cuda_pipe): correctness, then a candidate study
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_pipe_gpu.py 2>&1 | tail -25 | tee "$OUT/test_cuda_pipe_gpu.txt"
    timeout "${LIMIT_S:-400}" python3 benchmarks/row_variants.py --pipe --deadline-s "${STOP_S:-360}" \
      --out "$OUT/row_variants_pipe_${gpu}.json" 2>&1 | tail -80 ;;
  pipe-mini)  # with little device time left: the layernorm pipe candidates' GPU test, then two product picks
    timeout 50 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_pipe_gpu.py -k "layernorm_pipe" \
      2>&1 | tail -3 | tee "$OUT/test_pipe_layernorm_gpu.txt"
    timeout 130 python3 benchmarks/width_sweep.py --no-compile --only softmax,layernorm --match "12192x11008 " \
      --deadline-s 100 --stop-s 100 --out "$OUT/width_sweep_${gpu}_pipe_mini.json" 2>&1 | tail -8 ;;
  pipe-product-short)  # the layernorm pipe candidates' GPU test, then the sweep's 11008 and 50257 row cases
                       # through uhop.ops (default settings, empty store), ~6 min
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_pipe_gpu.py -k "layernorm_pipe or offers" \
      2>&1 | tail -4 | tee "$OUT/test_pipe_layernorm_gpu.txt"
    timeout "${LIMIT_S:-290}" python3 benchmarks/width_sweep.py --no-compile --only softmax,layernorm,rmsnorm,log_softmax \
      --match "x11008 ,x50257 " --deadline-s "${STOP_S:-240}" --stop-s "${STOP_S:-240}" \
      --out "$OUT/width_sweep_${gpu}_pipe_product.json" 2>&1 | tail -14 ;;
  twentyninth)  # what the twenty-eighth session left unverified on a GPU (the tl.fma softmax, log-softmax's
                # revert, large logits, the layernorm pipe candidates) and the pipe kernels in clusters (CL):
                # GPU tests, the clusters' candidate study on long rows, then the sweep's row cases of
                # 11008-262144 through the product path, ~9 min
    timeout 110 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_cuda_pipe_gpu.py tests/gpu/test_triton_gpu.py \
      -k "pipe or rowops or large_logits or filtered or row_templates or grouped" 2>&1 | tail -6 | tee "$OUT/test_gpu.txt"
    timeout 170 python3 benchmarks/row_variants.py --long --deadline-s 140 --out "$OUT/row_variants_long_${gpu}.json" 2>&1 \
      | grep -v Warning | tail -60
    timeout "${LIMIT_S:-250}" python3 benchmarks/width_sweep.py --no-compile --only softmax,layernorm,rmsnorm,log_softmax \
      --match "x11008 ,x50257 ,x151936 ,x262144 " --deadline-s "${STOP_S:-200}" --stop-s "${STOP_S:-200}" \
      --out "$OUT/width_sweep_${gpu}_pipe_product.json" 2>&1 | tail -30 ;;
  gqa)  # grouped-query attention (kv_groups): GPU tests, then the product path (empty store, default settings)
        # next to SDPA with enable_gqa at Llama 3 8B / 70B shapes, ~3 min
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_gpu.py -k "grouped or test_attention" 2>&1 \
      | tail -6 | tee "$OUT/test_gqa_gpu.txt"
    (cd benchmarks && timeout 150 python3 product_pick.py attention:1x32x2048x128:bfloat16:3:causal=true:kv_groups=4 \
      attention:4x32x1024x128:bfloat16:3:causal=true:kv_groups=4 attention:1x64x4096x128:bfloat16:3:causal=true:kv_groups=8 \
      attention:8x32x512x128:bfloat16:3:kv_groups=4 2>&1 | grep -v Warn | tee "$OUT/gqa_product_${gpu}.jsonl" | tail -8) ;;
  pipe-product)  # the sweep's row cases of 4096-50257 through uhop.ops (default settings, empty store), pipe offered
    timeout "${LIMIT_S:-560}" python3 benchmarks/width_sweep.py --no-compile --only softmax,layernorm,rmsnorm,log_softmax \
      --match "x4096 ,x5120 ,x11008 ,x32768 ,x50257 " --deadline-s "${STOP_S:-420}" --stop-s "${STOP_S:-420}" \
      --out "$OUT/width_sweep_${gpu}_pipe_product.json" 2>&1 | tail -30 ;;
  cuda)  # the CUDA cluster row kernels (uhop.backends.cuda_rows): correctness, then a candidate study
    python3 -c "from uhop.backends import nvrtc; print(nvrtc.available())" 2>&1 | tee "$OUT/nvrtc.txt"
    timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_rows_gpu.py 2>&1 | tail -15 | tee "$OUT/test_cuda_rows_gpu.txt"
    timeout "${LIMIT_S:-330}" python3 benchmarks/row_variants.py --cuda --deadline-s "${STOP_S:-280}" \
      --out "$OUT/row_variants_cuda_${gpu}.json" 2>&1 | tail -70 ;;
  rows-product)  # the width sweep's row cases through uhop.ops (default settings, empty store)
    timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_rows_gpu.py 2>&1 | tail -5 | tee "$OUT/test_cuda_rows_gpu.txt"
    timeout "${LIMIT_S:-420}" python3 benchmarks/width_sweep.py --only softmax,rmsnorm,layernorm --no-compile \
      --deadline-s "${STOP_S:-330}" --stop-s 360 --out "$OUT/width_sweep_${gpu}_rows.json" 2>&1 | tail -30 ;;
  fifteenth)
    timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_rows_gpu.py 2>&1 | tail -5 | tee "$OUT/test_cuda_rows_gpu.txt"
    timeout 90 python3 benchmarks/launch_overhead.py --out "$OUT/launch_overhead_${gpu}.json" 2>&1 | tail -5
    STOP_S=${STOP_S:-300} LIMIT_S=${LIMIT_S:-420} tvo softmax,layernorm,rmsnorm,elementwise,ew_gelu_mul_64m,softmax_gpt2_vocab \
      tuner_vs_oracle_${gpu}_a.json ;;
  twentieth)  # #20: the cluster row kernels' last partial wave: GPU tests, then every config with and without
              # `tail` next to a same-size copy (run at e719fdc, where the `tail` key existed: no gain), ~1 min
    timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_rows_gpu.py 2>&1 | tail -6 | tee "$OUT/test_gpu.txt"
    OUT=$OUT timeout 300 python3 benchmarks/diagnosis/twentieth_tail.py 2>&1 | grep -v Warning | tail -14 ;;
  nineteenth)  # the nineteenth session's changes: rowsum reductions at odd widths (aligned body, element-wise
              # edges) and softmax's one-tile config first past 8192: GPU tests, the rowsum A/B against the
              # generator before (OLD_EW: `git show 9a38bc1:uhop/backends/triton_kernels/elementwise.py`),
              # then the sweep's cases they touch through the product path, ~6 min
    timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_triton_gpu.py -k "elementwise or row or batched" 2>&1 \
      | tail -6 | tee "$OUT/test_gpu.txt"
    OUT=$OUT OLD_EW=${OLD_EW:-.gpu-scratch/old_elementwise.py} timeout 200 python3 benchmarks/diagnosis/nineteenth_rowsum.py 2>&1 | tail -8
    timeout 300 python3 benchmarks/width_sweep.py --match "softmax 12192x11008,elementwise" --deadline-s 240 --stop-s 260 \
      --out "$OUT/width_sweep_${gpu}_nineteenth.json" 2>&1 | grep -v Warning | tail -14 ;;
  h200)  # the first call on an H200: the two measurements #20 and #13 are judged by, in one call
         # (~9 min; the full sweep took 250 s on the H100, each writes its JSON case by case)
    timeout 300 python3 benchmarks/width_sweep.py --deadline-s 240 --stop-s 260 --out "$OUT/width_sweep_${gpu}_product.json" 2>&1 | tail -8
    STOP_S=180 LIMIT_S=250 tvo softmax,layernorm,rmsnorm,elementwise,ew_gelu_mul_64m,softmax_gpt2_vocab tuner_vs_oracle_${gpu}_a.json ;;
  h200b)  # the second call on an H200: the `uhop bench --device cuda` GPU test (the 7d4ee33 mend is unverified on a
          # GPU), then #13's GEMM, attention and conv cases (tuner-b, tuner-c) with less time each, ~9 min
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_bench_gpu.py 2>&1 | tail -3 | tee "$OUT/test_bench_gpu.txt"
    STOP_S=${STOP_S:-170} LIMIT_S=${LIMIT_S:-230} tvo gemm_8192,gemm_4096,gemm_1024,gemm_misaligned,gemm_skinny,gemm_short_k \
      tuner_vs_oracle_${gpu}_b.json
    STOP_S=${STOP_S:-170} LIMIT_S=${LIMIT_S:-230} tvo gemm_llm_mlp,gemm_fp32,gemm_bias_gelu,attention,attention_causal,conv2d \
      tuner_vs_oracle_${gpu}_c.json ;;
  logsm)  # log-softmax as an op (twenty-sixth session): its Triton and CUDA candidates and `uhop bench` on a
          # GPU (GPU tests), then the sweep's log-softmax cases through the product path, ~5 min
    timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_triton_gpu.py tests/gpu/test_cuda_rows_gpu.py \
      tests/gpu/test_bench_gpu.py -k "rowops or backend_candidates or every_op or bench" 2>&1 | tail -6 | tee "$OUT/test_gpu.txt"
    timeout 260 python3 benchmarks/width_sweep.py --only log_softmax --deadline-s 200 --stop-s 220 \
      --out "$OUT/width_sweep_${gpu}_log_softmax.json" 2>&1 | grep -v Warning | tail -6 ;;
  sixteenth)  # the sixteenth session's checks: direct Triton launches and the repacked CUDA launches
              # (GPU tests, launch overhead), ~3 min; then run `sweep` for the product figures
    timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_triton_launch_gpu.py tests/gpu/test_cuda_rows_gpu.py \
      tests/gpu/test_triton_gpu.py 2>&1 | tail -8 | tee "$OUT/test_gpu.txt"
    timeout 120 python3 benchmarks/launch_overhead.py --out "$OUT/launch_overhead_${gpu}.json" 2>&1 | tail -5 ;;
  seventeenth)  # the seventeenth session's GPU checks: the CUDA and Triton tests (new: fresh weights at a
                # reused address never read an old shifted table; GEMM-family kernels launched directly), ~4 min
    timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_cuda_rows_gpu.py tests/gpu/test_triton_gpu.py \
      tests/gpu/test_triton_launch_gpu.py tests/gpu/test_gated_mlp_gpu.py 2>&1 | tail -8 | tee "$OUT/test_gpu.txt"
    OUT=$OUT timeout 120 python3 benchmarks/diagnosis/seventeenth_launch.py 2>&1 | tail -8 ;;
  ncu-cluster)  # #20: why layernorm's cluster kernel stays at 80% of copy at 50257 (softmax 92%): Nsight
                # Compute's memory and warp-stall sections for each op's served configs, ~3 min
    timeout 280 ncu --profile-from-start off --clock-control none --csv --section SpeedOfLight \
      --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
      python3 benchmarks/ncu_rows.py cluster50257 >"$OUT/ncu_cluster50257_${gpu}.csv" 2>"$OUT/ncu_cluster.log"
    tail -3 "$OUT/ncu_cluster.log" ;;
  rows)  # candidate study, not product figures: every long-row config timed, then Nsight Compute
    timeout "${LIMIT_S:-300}" python3 benchmarks/row_variants.py --deadline-s "${STOP_S:-200}" --out "$OUT/row_variants_${gpu}.json" 2>&1 | tail -60
    m=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,launch__registers_per_thread
    m=$m,launch__occupancy_limit_registers,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__t_bytes_pipe_lsu_mem_local_op_ld.sum
    timeout 120 ncu --profile-from-start off --clock-control none --csv --metrics "$m" python3 benchmarks/ncu_rows.py \
      >"$OUT/ncu_rows_${gpu}.csv" 2>"$OUT/ncu_rows.log"; tail -3 "$OUT/ncu_rows.log" ;;
  verify)  # after the H100 run of 2026-12-05 15:10: the cases it missed (worker start off the budget),
           # the GPU half of the Buffer tests, the buffer chain with pinned copies and prefetch
    timeout 40 python3 -m pytest -q -p no:cacheprovider tests/unit/test_buffer.py 2>&1 | tail -3 | tee "$OUT/test_buffer_gpu.txt"
    timeout 75 python3 benchmarks/buffer_chain.py --json "$OUT/buffer_chain_${gpu}_run2.json" 2>&1 | tail -8
    STOP_S=${STOP_S:-100} LIMIT_S=${LIMIT_S:-170} tvo ew_gelu_mul_64m,gemm_bias_gelu,conv2d,attention tuner_vs_oracle_${gpu}_verify.json ;;
  next)  # the seventh session's changes on a GPU (row space, worker start off the budget, conv2d
         # reference on the device): the cases that missed or changed, most important first
    STOP_S=${STOP_S:-330} LIMIT_S=${LIMIT_S:-540} tvo ew_gelu_mul_64m,gemm_bias_gelu,softmax_gpt2_vocab,layernorm_5120,softmax,conv2d,gemm_1024 \
      tuner_vs_oracle_${gpu}_next.json ;;
  compile) timeout 570 python3 benchmarks/compile_models.py --device cuda --dtype bfloat16 --out "$OUT/compile_${gpu}_bf16.json" 2>&1 | tail -40 ;;
  eighth)  # CUDA graphs + vendor-first regions (#16), then the odd-width weight tables (#20)
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/compile/test_cudagraphs.py tests/gpu/test_vendor_gpu.py tests/gpu/test_guarded_dispatch_gpu.py 2>&1 \
      | grep -v "^DEBUG" | tail -12 \
      | tee "$OUT/test_cudagraphs_gpu.txt"
    T0=$(date +%s)
    for spec in "resnet --batch 64" "gpt2-block --batch 8 --seq 1024" "llama-block --batch 1 --seq 2048"; do
      set -- $spec
      l=$(( 330 - ($(date +%s) - T0) )); [ "$l" -lt 60 ] && { echo "skip $1"; continue; }
      UHOP_HOME=$(mktemp -d) timeout $l python3 benchmarks/compile_models.py --device cuda --dtype bfloat16 --models $spec \
        --out "$OUT/compile_${gpu}_bf16_$1.json" --profile "$OUT/profiles_$gpu" 2>&1 | grep -E "first call|\] *:|ms," | tail -7
    done
    timeout 120 python3 benchmarks/product_pick.py --device=cuda:0 layernorm:2670x50257:bfloat16:3 \
      rmsnorm:883x151936:bfloat16:2 2>&1 | tail -6 | tee "$OUT/product_pick_odd_${gpu}.txt" ;;
  llama-cg)  # why UHOP (CUDA graphs) ran the Llama block slower than torch.compile default on the H100
    UHOP_HOME=$(mktemp -d) timeout 330 python3 benchmarks/compile_models.py --device cuda --dtype bfloat16 --models llama-block \
      --batch 1 --seq 2048 --variants eager compile reduce-overhead uhop uhop-no-cudagraphs --rounds 9 \
      --out "$OUT/compile_${gpu}_bf16_llama-block_cg.json" --profile "$OUT/profiles_${gpu}_cg" 2>&1 | grep -E "first call|\] *:|ms," | tail -8
    tar czf "$OUT/profiles_cg.tgz" -C "$OUT" "profiles_${gpu}_cg" && rm -rf "$OUT/profiles_${gpu}_cg"
    [ "${PROBE:-1}" = 0 ] || timeout 200 python3 benchmarks/hfuse_probe.py --out "$OUT/hfuse_probe_${gpu}.json" 2>&1 | grep -v Warn | tail -6 ;;
  ninth)  # #16 after the tenth session's compile changes: cuBLASLt's tanh-GELU epilogue, activations, norms and
          # cuDNN convs left to Inductor's fusions; each model cold (empty store), then warm (same store, new
          # process: the regions UHOP measured faster are formed); kernel tables under profiles_*
    T0=$(date +%s)
    # NINTH_MODELS / NINTH_S / NINTH_TESTS=0: fewer models, less time, no tests (a short lease);
    # NINTH_COLD / NINTH_WARM: the variants of each phase (e.g. add uhop-tune-rest)
    IFS=, read -ra specs <<<"${NINTH_MODELS:-gpt2-block --batch 8 --seq 1024,resnet --batch 64,llama-block --batch 1 --seq 2048}"
    for spec in "${specs[@]}"; do
      set -- $spec
      h=$(mktemp -d)
      for phase in cold warm; do
        l=$(( ${NINTH_S:-450} - ($(date +%s) - T0) )); [ "$l" -lt 45 ] && { echo "skip $1 $phase"; continue; }
        v=${NINTH_COLD:-eager compile max-autotune uhop}; [ $phase = warm ] && v=${NINTH_WARM:-eager compile uhop}
        UHOP_HOME=$h timeout $l python3 benchmarks/compile_models.py --device cuda --dtype bfloat16 --models $spec \
          --variants $v --rounds 9 --out "$OUT/compile_${gpu}_bf16_$1_$phase.json" --profile "$OUT/profiles_${gpu}_$phase" \
          2>&1 | grep -E "first call|\] *:|ms," | tail -6
      done
    done
    [ "${NINTH_TESTS:-1}" = 0 ] || timeout 75 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_vendor_gpu.py \
      tests/compile/test_cudagraphs.py 2>&1 | grep -v "^DEBUG" | tail -4 | tee "$OUT/test_vendor_cudagraphs_gpu.txt" ;;
  tenth)  # what eighth and forms still owe, in one call: CUDA graph + vendor GPU tests, the ResNet-style net
          # (vendor-first convs), the odd-width product picks (#20), the elementwise forms (#20), ~9 min
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/compile/test_cudagraphs.py tests/gpu/test_vendor_gpu.py tests/gpu/test_guarded_dispatch_gpu.py 2>&1 \
      | grep -v "^DEBUG" | tail -6 | tee "$OUT/test_cudagraphs_vendor_gpu.txt"
    UHOP_HOME=$(mktemp -d) timeout 130 python3 benchmarks/compile_models.py --device cuda --dtype bfloat16 --models resnet \
      --batch 64 --variants eager compile max-autotune uhop --out "$OUT/compile_${gpu}_bf16_resnet.json" \
      --profile "$OUT/profiles_$gpu" 2>&1 | grep -E "first call|\] *:|ms," | tail -6
    timeout 110 python3 benchmarks/product_pick.py --device=cuda:0 layernorm:2670x50257:bfloat16:3 \
      rmsnorm:883x151936:bfloat16:2 2>&1 | tail -6 | tee "$OUT/product_pick_odd_${gpu}.txt"
    timeout 230 python3 benchmarks/width_sweep.py --only elementwise --deadline-s 190 --stop-s 200 \
      --out "$OUT/width_sweep_${gpu}_forms.json" 2>&1 | tail -12 ;;
  eleventh)  # what the eleventh session's H100 lease left: the elementwise forms after the rowsum max fix
             # (each candidate's status recorded), the tuner cases it did not reach, the GPU tests (~8 min)
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/compile/test_cudagraphs.py tests/gpu/test_vendor_gpu.py tests/gpu/test_guarded_dispatch_gpu.py 2>&1 \
      | grep -v "^DEBUG" | tail -4 | tee "$OUT/test_cudagraphs_vendor_gpu.txt"
    timeout 200 python3 benchmarks/width_sweep.py --only elementwise --deadline-s 160 --stop-s 170 \
      --out "$OUT/width_sweep_${gpu}_forms.json" 2>&1 | grep -v "^W1" | tail -10
    STOP_S=150 LIMIT_S=220 tvo gemm_8192,gemm_fp32,attention,gemm_1024 tuner_vs_oracle_${gpu}_rest.json ;;
  twelfth)  # the ResNet-style net with the rest's kernels tuned by Inductor (tune_rest), cold then warm, and
            # the elementwise forms after the rowsum max fix with the GPU tests (~9 min)
    NINTH_MODELS="resnet --batch 64" NINTH_S=${RESNET_S:-240} NINTH_TESTS=0 NINTH_COLD="eager compile max-autotune uhop uhop-tune-rest uhop-max-autotune" \
      NINTH_WARM="eager compile uhop uhop-tune-rest" bash "$0" ninth
    (cd "$OUT" && tar czf profiles.tgz profiles_* && rm -rf profiles_*)
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/compile/test_cudagraphs.py tests/gpu/test_vendor_gpu.py tests/gpu/test_guarded_dispatch_gpu.py 2>&1 \
      | grep -v "^DEBUG" | tail -4 | tee "$OUT/test_cudagraphs_vendor_gpu.txt"
    f=${FORMS_S:-200}; timeout $f python3 benchmarks/width_sweep.py --only elementwise --deadline-s $((f - 40)) \
      --stop-s $((f - 30)) --out "$OUT/width_sweep_${gpu}_forms.json" 2>&1 | grep -v "^W1" | tail -10 ;;
  thirteenth)  # what the twelfth session's lease left: the ResNet-style net with convolutions left to
               # Inductor (runtime.CONVS), cold then warm; the GPU tests (tensor-guard dispatch); ~6 min
    NINTH_MODELS="resnet --batch 64" NINTH_S=${RESNET_S:-220} NINTH_TESTS=0 bash "$0" ninth
    (cd "$OUT" && tar czf profiles.tgz profiles_* && rm -rf profiles_*)
    timeout 100 python3 -m pytest -q -p no:cacheprovider tests/compile/test_cudagraphs.py tests/gpu/test_vendor_gpu.py \
      tests/gpu/test_guarded_dispatch_gpu.py 2>&1 | grep -v "^DEBUG" | tail -4 | tee "$OUT/test_gpu.txt"
    # the ResNet's 3x3 conv through uhop.ops, NCHW and channels-last (each layout its own problem now)
    timeout 120 python3 benchmarks/product_pick.py conv2d:64x64x56x56x64x3x3:bfloat16:2 \
      conv2d:64x64x56x56x64x3x3:bfloat16:2:channels_last 2>&1 | tail -2 | tee "$OUT/product_pick_conv_layouts.txt" ;;
  gated)  # the gated-MLP op and region (thirteenth session): GPU tests, product picks at a small and a Llama
          # width, a small Llama-layout block (d768) cold then warm (the region forms from the warm store), ~7 min
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_gated_mlp_gpu.py 2>&1 | tail -2 | tee "$OUT/test_gated_gpu.txt"
    timeout 150 python3 benchmarks/product_pick.py gated_mlp:8192x2048x768:bfloat16:3 gated_mlp:2048x11008x4096:bfloat16:3 \
      2>&1 | grep '^{' | tee "$OUT/product_pick_gated_${gpu}.txt"
    NINTH_MODELS="llama-small-block --batch 8 --seq 1024" NINTH_S=${GATED_S:-270} NINTH_TESTS=0 bash "$0" ninth
    (cd "$OUT" && tar czf profiles_gated.tgz profiles_* && rm -rf profiles_*) ;;
  *) echo "unknown stage $stage"; exit 2 ;;
esac
