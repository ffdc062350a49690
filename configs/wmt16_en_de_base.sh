# WMT16 En->De (or De->En: SRC=de TGT=en), Transformer-Base, the recipe of Reich et al. (2020).
# Data: scripts/prepare_wmt16.sh (joint 32K BPE). Batch as in the paper: 4 GPUs x 4096 tokens x
# 2 accumulation steps = 8 GPU-batches per update, kept exact on the GPUs found here: GPUS
# (default: the visible GPUs, scripts/lib.sh's gpu_count) gives --update-freq 8/GPUS, and a
# count that does not divide 8 (3, 5, 6, 7) is refused with the nearest valid ones. Only what
# differs from the defaults of fairseq, of the token_kd criterion and of the scripts is set here;
# ${X:-...} values can be overridden.
SRC=${SRC:-en}
TGT=${TGT:-de}
GPUS=${GPUS:-$(gpu_count)}
[ -n "${UPDATE_FREQ:-}" ] || update_freq UPDATE_FREQ 8 "$GPUS"   # the paper's 4 GPUs: 2

ARCH_ARGS=(--arch transformer_wmt_en_de --share-all-embeddings)   # Transformer-Base, dropout 0.1
TRAIN_ARGS=(--fp16 --optimizer adam --adam-betas "(0.9,0.98)" --lr 7e-4
  --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-7
  --max-tokens 4096 --update-freq "$UPDATE_FREQ")
# exactly GPUS processes (fairseq would otherwise take every visible GPU)
[ "$GPUS" -le 0 ] || TRAIN_ARGS+=(--distributed-world-size "$GPUS")
# every rank reads checkpoint_last.pt itself on resume: fairseq's broadcast of rank 0's copy
# carries omegaconf objects that the weights_only loader of the other ranks refuses
[ "$GPUS" -le 1 ] || TRAIN_ARGS+=(--load-checkpoint-on-all-dp-ranks)
LS_EPSILON=0.1

# Every model, students included, uses SWA (the paper: "All models considered use stochastic
# weight averaging"): the 10 epoch checkpoints ending at the best validation epoch (the
# authors average their last 10). Stopping rule (docs/teachers.md): early stopping, patience 5.
MAX_EPOCH=${MAX_EPOCH:-60}
PATIENCE=${PATIENCE:-5}
SWA_EPOCHS=${SWA_EPOCHS:-10}
STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-300000}   # a cap only
TOPK=${TOPK:-64}          # V' (Table 2: 64; Table 3's De->En sweep: 32 64 128 256)

GEN_ARGS=(--beam 4 --lenpen 0.6 --max-tokens 8000)
