#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what bench/gpu_all.py needs on the device machine, where nothing
# can be fetched: .gpu_carry/ (git-ignored through .git/info/exclude, ~45 MB, under the 64 MiB a
# device call carries) holds
#   wheels/     the dependencies its image lacks (pydantic and its own, faiss-cpu), for its Python 3.12
#               (KINDS.md of the device tool; faiss' own needs, numpy and packaging, are in the image);
#   beauty/     the Beauty data (../shared does not travel);
#   beauty_emb.npy + beauty_emb.ids.txt   the items' MiniLM vectors (the bundled encoder, 91 MB, is
#               over the carry limit), computed here with the recipe's encoder and template.
# Then, with the device tool (one call, ~9 min; carry [".gpu_carry"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
#     .gpu_carry/wheels/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 &&
#   python3 bench/gpu_all.py --data .gpu_carry/beauty --out /tmp/gpu_all --json $OUT/gpu_all.json \
#     --set text.embeddings=.gpu_carry/beauty_emb.npy 2>&1 | tee $OUT/gpu_all.log
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/amazon2014/beauty}
EXCLUDE=$(git rev-parse --git-path info/exclude)  # a worktree's .git is a file
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.gpu_carry/' "$EXCLUDE" 2>/dev/null || echo '/.gpu_carry/' >> "$EXCLUDE"
mkdir -p .gpu_carry/wheels .gpu_carry/beauty
PLATFORMS=""
for n in 2_28 2_27 2_17 2014 1; do
  case $n in 2014|1) PLATFORMS="$PLATFORMS --platform manylinux${n}_x86_64" ;;
             *) PLATFORMS="$PLATFORMS --platform manylinux_${n}_x86_64" ;; esac
done
# the versions this project is tested with (pip show here); the device has typing_extensions
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
  -d .gpu_carry/wheels pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  faiss-cpu==1.15.1
cp "$DATA"/interactions.tsv.gz "$DATA"/items.jsonl .gpu_carry/beauty/
# the recipe's own embed stage (its encoder, template and cache), then its vectors with their ids
genrec run recipes/configs/amazon2014_beauty.yaml --preset full --out .gpu_carry/embed_run --until embed \
  --set data.dataset=.gpu_carry/beauty
cp .gpu_carry/embed_run/embed/embeddings.npy .gpu_carry/beauty_emb.npy
python3 -c "
from genrec.datasets import load_dataset
open('.gpu_carry/beauty_emb.ids.txt', 'w').write('\\n'.join(load_dataset('.gpu_carry/beauty').item_ids) + '\\n')"
rm -rf .gpu_carry/embed_run
du -sh .gpu_carry
cat <<'CMD'
device run (carry [".gpu_carry"], timeout_s 600):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu_carry/wheels/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && python3 bench/gpu_all.py --data .gpu_carry/beauty --out /tmp/gpu_all --json $OUT/gpu_all.json --set text.embeddings=.gpu_carry/beauty_emb.npy 2>&1 | tee $OUT/gpu_all.log
CMD
