//! The page in a real browser: Debian's headless Chromium driven over the DevTools protocol
//! (`headless_chrome`, which downloads nothing) against `vista serve` on a localhost socket with
//! the tiny CLIP and SAM fixtures. Type a query, see the grid with the API's first result first;
//! open it, click on the object, see SAM's mask drawn over it. Screenshots go to
//! `target/browser-artifacts/`.
//!
//! `.ci/run` installs `chromium` and sets `VISTA_REQUIRE_BROWSER=1`, so in CI a missing browser
//! fails the test; elsewhere it says how to get one and passes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions};
use vista::index::{IndexDb, IndexOptions, IndexedModel, ScanOptions};
use vista_server::worker::Batching;
use vista_server::{AppState, Clip, Library, Limits, Sam};

fn browser_path() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("VISTA_REQUIRE_BROWSER").is_err(),
            "no Chromium: `apt-get install chromium` (as .ci/run does)"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
    }
    found
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vista/tests/fixtures")
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Serves three photos (a coloured square on grey, 320×240) on a free localhost port.
fn start_server(root: &Path) -> std::net::SocketAddr {
    let colours = [("red", [220u8, 20, 20]), ("green", [20, 200, 40]), ("blue", [20, 40, 220])];
    for (name, rgb) in colours {
        let img = image::RgbImage::from_fn(320, 240, |x, y| {
            if (100..220).contains(&x) && (60..180).contains(&y) {
                image::Rgb(rgb)
            } else {
                image::Rgb([128, 128, 128])
            }
        });
        img.save(root.join(format!("{name}.png"))).unwrap();
    }
    let clip_model = fixtures().join("clip/openclip_e2e").display().to_string();
    let target = vista::device::Target::default();
    let pipeline = vista::clip::ClipPipeline::load(&clip_model, None, target.clone()).unwrap();
    let model = IndexedModel { id: vista::index::model_id(&clip_model), arch: None };
    let db_path = root.join(".vista/index.sqlite");
    let mut db = IndexDb::open(&db_path).unwrap();
    let roots = [root.to_path_buf()];
    vista::index::update(
        &pipeline,
        &model,
        &mut db,
        &roots,
        &ScanOptions::default(),
        &IndexOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let limits = Limits::default();
    let decode = vista::image::DecodeOptions::default();
    let library = Library::load(&db_path, &model.id).unwrap();
    let clip =
        Clip::start(Arc::new(pipeline), Batching { queue: 16, batch: 8, wait: Duration::from_millis(2) }, decode);
    let sam_weights = fixtures().join("sam/vit_official/sam_vit_tiny.pth");
    let sam =
        vista::apps::segment::SegmentPipeline::load(sam_weights.to_str().unwrap(), &Default::default(), None).unwrap();
    let sam = Sam::start(sam, 4, 16, decode);
    let state = Arc::new(AppState::new(Some(clip), Some(sam), library, limits, None));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(vista_server::serve("127.0.0.1:0".parse().unwrap(), state, move |a| tx.send(a).unwrap())).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(60)).expect("the server starts")
}

fn screenshot(tab: &headless_chrome::Tab, name: &str) {
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
    std::fs::write(artifacts().join(name), png).unwrap();
}

/// The text of `selector` once `done` holds for it (or after 20 s, as it then is).
fn text_when(tab: &headless_chrome::Tab, selector: &str, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        text = tab.find_element(selector).unwrap().get_inner_text().unwrap();
        if done(&text) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    text
}

#[test]
fn search_then_click_to_segment_in_chromium() {
    let Some(chrome) = browser_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let addr = start_server(&root);
    let base = format!("http://{addr}");

    // What the API ranks first for the query: the page must show it first.
    let api: serde_json::Value = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /v1/search?q=red%20square HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    };
    let first_id = api["results"][0]["id"].as_str().unwrap().to_string();

    let options = LaunchOptions::default_builder()
        .path(Some(chrome))
        .sandbox(false)
        .headless(true)
        .window_size(Some((1000, 700)))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let browser = Browser::new(options).unwrap();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(Duration::from_secs(60));
    tab.navigate_to(&base).unwrap().wait_until_navigated().unwrap();
    tab.wait_for_element("#q").unwrap().click().unwrap();
    tab.type_str("red square").unwrap().press_key("Enter").unwrap();
    tab.wait_for_element("#grid .cell img").unwrap();
    let first = tab.wait_for_elements("#grid .cell").unwrap();
    assert_eq!(first.len(), 3, "every indexed photo is a result");
    let shown_first = tab.evaluate("document.querySelector('#grid .cell').dataset.id", false).unwrap().value.unwrap();
    assert_eq!(shown_first.as_str().unwrap(), first_id, "the grid shows the API's first result first");
    screenshot(&tab, "search.png");

    // Live results: typing alone (no Enter) searches once the typing pauses.
    tab.evaluate("document.getElementById('q').value = ''", false).unwrap();
    tab.find_element("#q").unwrap().click().unwrap();
    tab.type_str("green").unwrap();
    let status = text_when(&tab, "#status", |t| t.contains("for green"));
    assert!(status.contains("3 results for green"), "live results: {status}");
    let cells = tab.wait_for_elements("#grid .cell").unwrap();

    // Open it and click on the square: a mask is drawn over the image.
    cells[0].click().unwrap();
    tab.wait_for_element("#viewer:not([hidden]) #photo").unwrap();
    tab.evaluate(
        "new Promise(r => { const i = document.getElementById('photo'); i.complete && i.naturalWidth ? r(1) : i.onload = () => r(1); })",
        true,
    )
    .unwrap();
    tab.wait_for_element("#overlay").unwrap().click().unwrap();
    let status = text_when(&tab, "#vstatus", |t| t.starts_with("score"));
    assert!(status.starts_with("score"), "the click was segmented: {status}");
    // The overlay draws once the mask PNG has loaded: count its tinted pixels until they show.
    let mut painted = 0;
    for _ in 0..100 {
        painted = tab
            .evaluate(
                "(() => { const c = document.getElementById('overlay'); \
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                  let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] === 120) n++; return n; })()",
                false,
            )
            .unwrap()
            .value
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if painted > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(painted > 0, "mask pixels are drawn over the photo");
    screenshot(&tab, "segment.png");
}
