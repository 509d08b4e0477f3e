# Local mirrors of CI (`just lint`, `just test`) and everyday commands.

lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings

test:
    cargo test --locked

ci:
    .ci/run

demo:
    cargo run --release -- demo

bench:
    cargo bench --locked

loadtest:
    loadtest/run.sh
