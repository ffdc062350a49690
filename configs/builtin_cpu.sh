# Built-in corpus (Ding de-en example sentences, en->de) on a 2-core CPU: a tiny Transformer.
# Sourced by scripts/*.sh; values marked ${X:-...} can be overridden from the environment.
SRC=${SRC:-en}
TGT=${TGT:-de}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-4000}     # joint SentencePiece vocabulary

TEACHER_TASK=${TEACHER_TASK:-translation_distill}  # plain translation (no store) + ECE in validation
DEVICE_ARGS=(--cpu)   # for ensdist-memoize / ensdist-evaluate
ARCH_ARGS=(--arch transformer --share-all-embeddings
  --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128
  --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256
  --encoder-attention-heads 4 --decoder-attention-heads 4
  --encoder-normalize-before --decoder-normalize-before)   # pre-norm: stable at a high lr
TRAIN_ARGS=(--cpu --optimizer adam --adam-betas "(0.9,0.98)" --lr 5e-3
  --lr-scheduler inverse_sqrt --warmup-updates 200 --clip-norm 0.0
  --dropout 0.1 --weight-decay 0.0001 --max-tokens 2048
  --required-batch-size-multiple 1 --num-workers 0)
LS_EPSILON=0.1            # LS-mode teachers' label smoothing (CE mode: 0)
MAX_EPOCH=${MAX_EPOCH:-5}         # teachers train for this many epochs ...
SWA_EPOCHS=${SWA_EPOCHS:-2}        # ... and SWA averages the checkpoints of the last this-many

# Students (scripts/distill.sh): as many updates as a teacher's MAX_EPOCH epochs (136 per epoch).
STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-680}
TOPK=${TOPK:-64}                  # V': teacher events stored per token (ensdist-memoize --topk)
KD_WEIGHT=0.5                     # beta
PRECISION_LIMIT=1e6               # bound on the Proxy-Dirichlet precision
DIRICHLET_ARCH=dirichlet_transformer
INTRA_PASSES=3 INTRA_ALPHA=5 INTRA_P=5 INTRA_Q=10

# Decoding: beam 4 as in the paper; outputs capped at 1.5 x source + 10 tokens (sentences of
# this corpus are about as long in both languages), which bounds the time of undertrained models.
GEN_ARGS=(--beam 4 --lenpen 1.0 --max-tokens 8000 --max-len-a 1.5 --max-len-b 10)
