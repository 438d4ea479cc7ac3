#!/bin/sh
# One night of the nightly pipeline (.gitlab-ci.yml) run here by gitlab-ci-local's shell
# executor (make ci-local): plan -> shard jobs (a child pipeline) -> merge, on the selection
# CI_KERNELS / CI_SCENARIOS, with diff.md against the last good night run this way.
# The pipeline runs in a copy of the work tree as it is now (tracked and new files, not
# ignored ones) committed into a repository of its own under CI_LOCAL_DIR, so the jobs
# never write into the work tree; gitlab-ci-local keeps its caches there between nights.
# A night whose pipeline succeeds becomes the baseline of the next (as on GitLab).
# Exit status: the pipeline's.
set -eu
: "${CI_LOCAL_TOOL:?}" "${CI_LOCAL_DIR:?}" "${CI_KERNELS?}" "${CI_SCENARIOS?}" "${CI_SHARDS:=1}"
mkdir -p "$CI_LOCAL_DIR/project" "$CI_LOCAL_DIR/nights"
dir=$(realpath "$CI_LOCAL_DIR") tool=$(realpath "$CI_LOCAL_TOOL") project=$(realpath "$CI_LOCAL_DIR")/project
night=$(( $(ls "$dir/nights" | wc -l) + 1 ))

find "$project" -mindepth 1 -maxdepth 1 ! -name .gitlab-ci-local ! -name .git -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --ignore-missing-args --files-from=- ./ "$project/"
git -C "$project" init -q -b main
git -C "$project" add -A
git -C "$project" -c user.name=kexec-lab -c user.email=kexec-lab@localhost commit -q --allow-empty -m "night $night"

# The selection goes in as pipeline variables (they reach the plan job, as on a GitLab
# schedule); the baseline as a project variable (like a CI/CD setting, it reaches the child
# pipeline's merge job too: gitlab-ci-local hands --variable values to the parent only).
# (gitlab-ci-local reads that file relative to the project; a value starting with / would be
# taken for a file variable unless typed.)
printf 'LAB_BASELINE_DIR:\n  type: variable\n  values:\n    "*": "%s"\n' "$dir/last-good" \
  > "$project/.gitlab-ci-local-variables.yml"
start=$(date +%s)
status=0
(cd "$project" && "$tool" --shell-isolation --force-shell-executor --no-artifacts-to-source \
  --variable CI_PIPELINE_SOURCE=schedule \
  --variable "KERNELS=$CI_KERNELS" --variable "SCENARIOS=$CI_SCENARIOS" \
  --variable "SHARDS=$CI_SHARDS") || status=$?
seconds=$(( $(date +%s) - start ))

out="$dir/nights/$night"
mkdir -p "$out"
if [ -d "$project/.gitlab-ci-local/artifacts/lab-merge" ]; then
  cp -a "$project/.gitlab-ci-local/artifacts/lab-merge/." "$out/"
fi
echo "ci-local night $night: pipeline exit $status in $seconds s; reports: $out/merged"
if [ -f "$out/merged/diff.md" ]; then
  echo "--- $out/merged/diff.md"
  cat "$out/merged/diff.md"
fi
if [ "$status" -eq 0 ]; then
  rm -rf "$dir/last-good" && cp -a "$out" "$dir/last-good"
  echo "night $night is the baseline of the next"
fi
exit "$status"
