//! scalectl's entry point: the command line and its exit contract are in
//! `scalectl::cli`.

fn main() -> std::process::ExitCode {
    scalectl::cli::main(std::env::args_os())
}
