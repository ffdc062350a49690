# IWSLT14 De->En, transformer_iwslt_de_en: the intra-distillation recipe of Xu et al. (2022) as
# the reproducibility report ran it (one GPU). Data: scripts/prepare_iwslt14.sh (SentencePiece
# 12k joint vocabulary). Only what differs from the defaults of fairseq, of the token_kd
# criterion (K=3 passes in the recipe; alpha 5, p 5, q 10 are its defaults) and of the scripts.
SRC=${SRC:-de}
TGT=${TGT:-en}

# Unshared embeddings (encoder input, decoder input, output projection): 49.98M parameters as
# reported; sharing them would give 37.69M.
ARCH_ARGS=(--arch transformer_iwslt_de_en)
TRAIN_ARGS=(--optimizer adam --adam-betas "(0.9,0.98)" --adam-eps 1e-6 --lr 5e-4
  --lr-scheduler inverse_sqrt --warmup-updates 8000
  --dropout 0.3 --attention-dropout 0.1 --weight-decay 0.0001 --max-tokens 4096)
LS_EPSILON=0.1

# Xu et al.: 50k updates, the checkpoint with the lowest validation loss (checkpoint_best.pt)
# is evaluated, no SWA. Teachers trained with this config (train_ensemble.sh) use the rule of
# docs/teachers.md.
MAX_EPOCH=${MAX_EPOCH:-100}
PATIENCE=${PATIENCE:-10}
SWA_EPOCHS=${SWA_EPOCHS:-10}
STUDENT_SWA_EPOCHS=${STUDENT_SWA_EPOCHS:-0}        # students: checkpoint_best.pt
STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-50000}    # also N of the intra-distillation schedule
TOPK=${TOPK:-64}

GEN_ARGS=(--beam 5 --max-tokens 8000)
