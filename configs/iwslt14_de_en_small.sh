# IWSLT14 De->En, transformer_iwslt_de_en: the intra-distillation recipe of Xu et al. (2022)
# (one GPU). Data: scripts/prepare_iwslt14.sh (SentencePiece 12k joint vocabulary).
SRC=${SRC:-de}
TGT=${TGT:-en}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-12000}

TEACHER_TASK=${TEACHER_TASK:-translation_distill}  # plain translation (no store) + ECE in validation
DEVICE_ARGS=()   # for ensdist-memoize / ensdist-evaluate (GPU when present)
ARCH_ARGS=(--arch transformer_iwslt_de_en --share-all-embeddings)
TRAIN_ARGS=(--optimizer adam --adam-betas "(0.9,0.98)" --lr 5e-4
  --lr-scheduler inverse_sqrt --warmup-updates 8000 --clip-norm 0.0
  --dropout 0.3 --weight-decay 0.0001 --max-tokens 4096)
LS_EPSILON=0.1
MAX_EPOCH=${MAX_EPOCH:-100}         # teachers train for this many epochs ...
SWA_EPOCHS=${SWA_EPOCHS:-10}        # ... and SWA averages the checkpoints of the last this-many

# Students (scripts/distill.sh)
STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-50000}
TOPK=${TOPK:-64}                  # V' (the paper's sweep: 32 64 128 256)
KD_WEIGHT=0.5
PRECISION_LIMIT=1e6
DIRICHLET_ARCH=dirichlet_transformer_iwslt_de_en
INTRA_PASSES=3 INTRA_ALPHA=5 INTRA_P=5 INTRA_Q=10   # Xu et al.: K=3, alpha=5, p=5, q=10

GEN_ARGS=(--beam 5 --lenpen 1.0 --max-tokens 8000)
