// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // WebKit turns LANG into navigator.language; "C" or "POSIX" (minimal containers, CI) is not
    // a BCP 47 tag and makes Intl.NumberFormat throw in the UI's charting library.
    let lang = std::env::var("LANG").unwrap_or_default();
    let base = lang.split('.').next().unwrap_or("");
    if base.is_empty() || base == "C" || base == "POSIX" {
        std::env::set_var("LANG", "en_US.UTF-8");
    }
    fixpoint_desktop::run();
}
