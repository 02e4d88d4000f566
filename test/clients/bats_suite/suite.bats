# A user's bats suite on pgtestpool's shell helper: 52 tests, each writing to its own database
# and checking it sees only the template's rows. Run by test/shell.test.ts (bats --jobs 4).
# The glue a user writes is the two lines in setup() and teardown() (and pgtestpool on PATH).

setup() {
  local started=$EPOCHREALTIME
  eval "$(pgtestpool claim --env)"
  psql -XAtqc 'SELECT 1' >/dev/null   # connected to the clone: the setup a test waits for
  [[ -z ${PGTESTPOOL_TIMINGS:-} ]] || echo "$started $EPOCHREALTIME" >>"$PGTESTPOOL_TIMINGS"
}

teardown() {
  pgtestpool release --failed ${BATS_TEST_COMPLETED:+--passed}   # --passed when it did: keep-on-failure knows
}

isolated() {
  [ "$(psql -XAtc 'SELECT string_agg(email, $$,$$ ORDER BY email) FROM accounts')" = 'a@example.com,b@example.com' ]
  psql -XAtqc "INSERT INTO accounts (email) VALUES ('test$1@example.com')"
  [ "$(psql -XAtc 'SELECT count(*) FROM accounts')" = 3 ]
  [ "$(psql -XAtc 'SELECT current_database()')" = "$PGTESTPOOL_DB" ]
}

@test "isolated 1" {
  isolated 1
}

@test "isolated 2" {
  isolated 2
}

@test "isolated 3" {
  isolated 3
}

@test "isolated 4" {
  isolated 4
}

@test "isolated 5" {
  isolated 5
}

@test "isolated 6" {
  isolated 6
}

@test "isolated 7" {
  isolated 7
}

@test "isolated 8" {
  isolated 8
}

@test "isolated 9" {
  isolated 9
}

@test "isolated 10" {
  isolated 10
}

@test "isolated 11" {
  isolated 11
}

@test "isolated 12" {
  isolated 12
}

@test "isolated 13" {
  isolated 13
}

@test "isolated 14" {
  isolated 14
}

@test "isolated 15" {
  isolated 15
}

@test "isolated 16" {
  isolated 16
}

@test "isolated 17" {
  isolated 17
}

@test "isolated 18" {
  isolated 18
}

@test "isolated 19" {
  isolated 19
}

@test "isolated 20" {
  isolated 20
}

@test "isolated 21" {
  isolated 21
}

@test "isolated 22" {
  isolated 22
}

@test "isolated 23" {
  isolated 23
}

@test "isolated 24" {
  isolated 24
}

@test "isolated 25" {
  isolated 25
}

@test "isolated 26" {
  isolated 26
}

@test "isolated 27" {
  isolated 27
}

@test "isolated 28" {
  isolated 28
}

@test "isolated 29" {
  isolated 29
}

@test "isolated 30" {
  isolated 30
}

@test "isolated 31" {
  isolated 31
}

@test "isolated 32" {
  isolated 32
}

@test "isolated 33" {
  isolated 33
}

@test "isolated 34" {
  isolated 34
}

@test "isolated 35" {
  isolated 35
}

@test "isolated 36" {
  isolated 36
}

@test "isolated 37" {
  isolated 37
}

@test "isolated 38" {
  isolated 38
}

@test "isolated 39" {
  isolated 39
}

@test "isolated 40" {
  isolated 40
}

@test "isolated 41" {
  isolated 41
}

@test "isolated 42" {
  isolated 42
}

@test "isolated 43" {
  isolated 43
}

@test "isolated 44" {
  isolated 44
}

@test "isolated 45" {
  isolated 45
}

@test "isolated 46" {
  isolated 46
}

@test "isolated 47" {
  isolated 47
}

@test "isolated 48" {
  isolated 48
}

@test "isolated 49" {
  isolated 49
}

@test "isolated 50" {
  isolated 50
}

@test "a test that outlives the holder's poll still has its database" {
  sleep 2.5   # the holder checks every second that the test's shell is alive
  [ "$(psql -XAtc 'SELECT count(*) FROM accounts')" = 2 ]
}

@test "the clone's URL works as psql's argument" {
  [ "$(PGDATABASE= psql "$PGTESTPOOL_DB_URL" -XAtc 'SELECT current_database()')" = "$PGTESTPOOL_DB" ]
}

@test "fails on purpose" {
  [ -n "${PGTESTPOOL_DEMO_FAILURE:-}" ] || skip "only when the keep-on-failure run asks for it"
  psql -XAtqc "INSERT INTO accounts (email) VALUES ('the-bug@example.com')"
  [ 1 = 2 ]
}
