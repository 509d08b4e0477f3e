# Local mirrors of CI (`just lint`, `just test`) and everyday commands.

lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings

test:
    cargo test --locked

ci:
    .ci/run

# The deploy kit's offline checks (as in CI; installs missing tools).
deploy-check:
    cargo build --locked --bin scoregate
    KUBECTL="$(.ci/deploy-tools | tail -n 1 | cut -d= -f2-)" python3 .ci/deploy_checks.py --scoregate target/debug/scoregate

demo:
    cargo run --release -- demo

bench:
    cargo bench --locked

loadtest:
    loadtest/run.sh
