# Sourced by the training scripts: builds the release binary and defines `glimpse`, which runs it
# and prints the step's wall time on stderr (the docs quote these times).
cargo build --release -p glimpse-server
glimpse() {
  local start=$SECONDS
  target/release/glimpse "$@"
  echo "[$((SECONDS - start)) s] glimpse $1" >&2
}
