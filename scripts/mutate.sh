#!/usr/bin/env bash
# Mutation testing (issue 14): mutmut over the modules where a silent bug is a national incident,
# each against the unit tests that cover it, and a score per module. Not part of `make test`.
#
#   make mutate                          # every module below
#   scripts/mutate.sh registry/rules/pin.py    # only the modules named
#   MUTATE_ONLY="_tolerant CallGate._fail" MUTATE_TESTS="tests/grpc/test_x.py" \
#       scripts/mutate.sh registry/grpc/gate.py  # part of one module, against chosen tests
#
# mutmut edits each module in place while it runs (and puts it back): do not edit or commit the
# tree meanwhile, and do not run `mutmut show` or `mutmut results` until the run has ended: they
# re-read the module from disk, record the mutant then on disk as the source, and the run
# crashes later ("Attribute Mutant.line is required"). Read progress from the cache instead:
#   python -c 'import sqlite3; print(sqlite3.connect("file:.mutmut-cache?mode=ro", uri=True)
#              .execute("SELECT status, count(*) FROM Mutant GROUP BY status").fetchall())'
# Surviving mutants, after the run: `.venv/bin/mutmut show <id>` while .mutmut-cache is there.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# mutmut 2 counts only exit status 1 as "killed": a mutant that breaks the import (pytest exits
# 2, collection error) would be reported as surviving, hence `|| exit 1` around the run.
# -B and no bytecode anywhere: a mutant of the same size saved within the second of the last
# compile would otherwise run as the stale .pyc of the original (measured: 31 false survivors).
export PYTHONDONTWRITEBYTECODE=1
# A mutant that makes a call wait forever fails at 30 s instead of the suite's 120 s.
PYTEST="$BIN/python -B -m pytest -x -q -p no:cacheprovider -o timeout=30"

# module = the tests that must kill its mutants (pure modules: unit tests, seconds per run).
declare -A TESTS=(
  [registry/rules/pin.py]="tests/rules/test_pin.py tests/rules/test_pin_allocation.py tests/clients/test_pin_parity.py"
  [registry/rules/audit.py]="tests/rules/test_audit_chain.py"
  [registry/rules/cards.py]="tests/rules/test_cards.py tests/rules/test_card_expiry.py"
  [registry/rules/identity.py]="tests/rules/test_validate_claim.py tests/rules/test_verification.py tests/rules/test_read_mask.py"
  [registry/rules/limits.py]="tests/rules/test_limits.py"
  [registry/rules/dates.py]="tests/rules/test_dates.py"
  [registry/rules/tokens.py]="tests/rules/test_tokens.py tests/grpc/test_method_access.py tests/grpc/auth tests/grpc/test_gate_guards.py"
  [registry/db/verification.py]="tests/grpc/test_oracle_budgets.py tests/grpc/test_batch_card_ownership.py tests/grpc/test_verify_fields.py tests/grpc/test_verify_attestations.py tests/grpc/test_batch_verify.py tests/grpc/test_get_citizen.py"
  [registry/grpc/disclosure.py]="tests/grpc/test_field_policy.py tests/grpc/test_get_citizen.py"
  [registry/usecases/lookup.py]="tests/grpc/test_get_citizen.py tests/grpc/test_field_policy.py tests/grpc/test_access_log.py tests/grpc/test_watch_changes.py tests/ops/test_replicas.py"
  [registry/usecases/budgets.py]="tests/usecases/test_budgets.py tests/grpc/test_oracle_budgets.py tests/grpc/test_verify_batches.py tests/grpc/test_batch_verify.py tests/grpc/test_limits.py tests/db/test_budgets.py"
  [registry/db/budgets.py]="tests/db/test_budgets.py tests/grpc/test_oracle_budgets.py tests/grpc/test_verify_batches.py"
  [registry/runtime/audit_writer.py]="tests/runtime/test_audit_group_commit.py tests/runtime/test_audit_writers.py tests/grpc/test_audit_entries.py tests/grpc/test_cancelled_calls_audited.py"
  [registry/grpc/gate.py]="tests/grpc/test_database_errors.py tests/ops/test_served_process.py tests/grpc/test_watch_changes.py tests/grpc/test_method_access.py tests/grpc/auth tests/grpc/test_gate_guards.py tests/grpc/test_limits.py tests/grpc/test_request_bounds.py tests/grpc/test_corrupt_messages.py tests/ops/test_tls.py tests/grpc/test_audit_entries.py tests/grpc/test_access_log.py tests/grpc/test_cancelled_calls_audited.py"
)
# Modules mutated only in part (their tests need a server: minutes a mutant): the functions
# named here, by a patch that marks their lines as changed (mutmut --use-patch-file).
declare -A ONLY=(
  [registry/grpc/gate.py]="_check_deadline _bearer certificate_names _check_certificate CallGate.intercept_service CallGate._authenticate CallGate._permit"
)
ORDER=(registry/rules/pin.py registry/rules/audit.py registry/rules/cards.py registry/rules/identity.py
       registry/rules/limits.py registry/rules/dates.py registry/rules/tokens.py registry/db/verification.py
       registry/grpc/gate.py registry/grpc/disclosure.py registry/usecases/lookup.py
       registry/usecases/budgets.py registry/db/budgets.py registry/runtime/audit_writer.py)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")

summary=()
for module in "${modules[@]}"; do
  tests=${MUTATE_TESTS:-${TESTS[$module]:?"no tests configured for $module"}}
  # MUTATE_ONLY="f Class.m ..." mutates those functions of the module instead of ONLY's.
  [ -z "${MUTATE_ONLY:-}" ] || ONLY[$module]=$MUTATE_ONLY
  rm -f .mutmut-cache
  find registry tests -name __pycache__ -prune -exec rm -rf {} +
  only=()
  if [ -n "${ONLY[$module]:-}" ]; then
    # shellcheck disable=SC2086  # the names are words
    "$BIN/python" scripts/mutate_lines.py "$module" ${ONLY[$module]} > .mutmut-lines.patch
    only=(--use-patch-file .mutmut-lines.patch)
    echo "== $module (only ${ONLY[$module]}) against $tests"
  else
    echo "== $module against $tests"
  fi
  "$BIN/mutmut" run --paths-to-mutate "$module" --tests-dir tests "${only[@]}" \
    --runner "bash -c '$PYTEST $tests || exit 1'" --no-progress --simple-output || true
  results=$("$BIN/mutmut" results || true)
  echo "$results" > ".mutmut-results-$(echo "$module" | tr / _).txt"
  killed=$("$BIN/python" -c '
import sqlite3
rows = dict(sqlite3.connect(".mutmut-cache").execute(
    "SELECT status, count(*) FROM Mutant GROUP BY status").fetchall())
total = sum(rows.values())
# suspicious: the tests failed, slowly; a timeout is counted killed but shown (a loaded
# machine can time out a survivor: rerun those alone).
killed = sum(rows.get(s, 0) for s in ("ok_killed", "ok_suspicious", "bad_timeout"))
survived = rows.get("bad_survived", 0)
timeouts = rows.get("bad_timeout", 0)
print(f"{killed}/{total} ({100 * killed / max(total, 1):.0f}%), survived {survived}, "
      f"of the killed {timeouts} by timeout")
')
  # The survivors with their lines, kept after the cache is cleared for the next module.
  "$BIN/python" -c '
import sqlite3, sys
rows = sqlite3.connect(".mutmut-cache").execute(
    "SELECT m.id, l.line_number, m.\"index\", l.line FROM Mutant m JOIN Line l ON m.line = l.id "
    "WHERE m.status = (?) ORDER BY l.line_number", ("bad_survived",))
for mid, number, index, text in rows:
    print(f"mutant {mid} line {number + 1} (mutation {index} of the line): {text.strip()}")
' > ".mutmut-survivors-$(echo "$module" | tr / _).txt"
  echo "survivors: .mutmut-survivors-$(echo "$module" | tr / _).txt (mutmut show ID while .mutmut-cache is there)"
  summary+=("$module: killed $killed")
  echo "$results"
done
echo
echo "== mutation score per module"
printf '%s\n' "${summary[@]}"
