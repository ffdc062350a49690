# Built-in corpus (Ding de-en example sentences, en->de) on a 2-core CPU: a tiny Transformer.
# Sourced by scripts/*.sh; values marked ${X:-...} can be overridden from the environment.
SRC=${SRC:-en}
TGT=${TGT:-de}
SPM_VOCAB_SIZE=${SPM_VOCAB_SIZE:-4000}     # joint SentencePiece vocabulary

TEACHER_TASK=${TEACHER_TASK:-translation_distill}  # plain translation (no store) + ECE in validation
ARCH_ARGS=(--arch transformer --share-all-embeddings
  --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128
  --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256
  --encoder-attention-heads 4 --decoder-attention-heads 4)
TRAIN_ARGS=(--cpu --optimizer adam --adam-betas "(0.9,0.98)" --lr 2e-3
  --lr-scheduler inverse_sqrt --warmup-updates 300 --clip-norm 0.0
  --dropout 0.1 --weight-decay 0.0001 --max-tokens 4096
  --required-batch-size-multiple 1 --num-workers 0)
LS_EPSILON=0.1            # LS-mode teachers' label smoothing (CE mode: 0)
MAX_EPOCH=${MAX_EPOCH:-24}         # teachers train for this many epochs ...
SWA_EPOCHS=${SWA_EPOCHS:-6}        # ... and SWA averages the checkpoints of the last this-many

GEN_ARGS=(--beam 5 --lenpen 1.0 --max-tokens 8000)
