# WMT16 En->De, Transformer-Base, the recipe of Reich et al. (2020) (8 GPU-batches of 4096
# tokens: 8 GPUs x update-freq 1, or 1 GPU x update-freq 8). Data: scripts/prepare_wmt16.sh.
SRC=${SRC:-en}
TGT=${TGT:-de}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-32000}

TEACHER_TASK=${TEACHER_TASK:-translation_distill}  # plain translation (no store) + ECE in validation
DEVICE_ARGS=()   # for ensdist-memoize / ensdist-evaluate (GPU when present)
ARCH_ARGS=(--arch transformer_wmt_en_de --share-all-embeddings)
TRAIN_ARGS=(--optimizer adam --adam-betas "(0.9,0.98)" --lr 7e-4
  --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-7 --clip-norm 0.0
  --dropout 0.1 --weight-decay 0.0 --max-tokens 4096 --update-freq ${UPDATE_FREQ:-1} --fp16)
LS_EPSILON=0.1
MAX_EPOCH=${MAX_EPOCH:-60}         # teachers train for this many epochs ...
SWA_EPOCHS=${SWA_EPOCHS:-10}        # ... and SWA averages the checkpoints of the last this-many

# Students (scripts/distill.sh)
STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-300000}
TOPK=${TOPK:-64}                  # V' (the paper's sweep: 32 64 128 256)
KD_WEIGHT=0.5
PRECISION_LIMIT=1e6
DIRICHLET_ARCH=dirichlet_transformer
INTRA_PASSES=3 INTRA_ALPHA=5 INTRA_P=5 INTRA_Q=10   # Xu et al.: K=3, alpha=5, p=5, q=10

GEN_ARGS=(--beam 4 --lenpen 0.6 --max-tokens 8000)
