//! Hooks that tie browser resources to a component's life.
//!
//! [`use_event_stream`] turns a server-sent event stream into callbacks while the component
//! lives, closes the `EventSource` on cleanup, and reconnects after the gateway goes away
//! (a restart, a deploy): the browser retries by itself after a dropped connection, but gives
//! up for good on an error answer (a 502 from a proxy, a 503 while the gateway starts), so
//! the hook opens a new stream then, resuming after the last event id it saw.

use std::{cell::RefCell, rc::Rc, time::Duration};

use leptos::prelude::*;
use send_wrapper::SendWrapper;
use wasm_bindgen::{JsCast, closure::Closure};
use web_sys::{EventSource, MessageEvent};

use crate::api;

/// The state of a live connection, for the header's indicator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    Connecting,
    Open,
    /// Lost; trying again.
    Retrying,
    /// Ended on purpose (the job finished).
    Done,
}

impl Live {
    pub fn label(self) -> &'static str {
        match self {
            Live::Connecting => "connecting",
            Live::Open => "live",
            Live::Retrying => "reconnecting",
            Live::Done => "finished",
        }
    }
}

/// Longest wait between reconnects.
const MAX_RETRY: Duration = Duration::from_secs(8);

/// What a stream calls with each event's name and data.
type OnEvent = Box<dyn Fn(&str, &str)>;

struct Stream {
    path: String,
    names: &'static [&'static str],
    /// The event that ends the stream for good (a job's `job_done`).
    last: Option<&'static str>,
    on_event: OnEvent,
    live: WriteSignal<Live>,
    source: Option<EventSource>,
    listeners: Vec<Closure<dyn FnMut(MessageEvent)>>,
    on_open: Option<Closure<dyn FnMut()>>,
    on_error: Option<Closure<dyn FnMut()>>,
    last_id: String,
    retry: Duration,
    stopped: bool,
}

impl Stream {
    /// Closes the connection. The callbacks stay: this may run inside one of them, and a
    /// closure must not be dropped while it runs. [`connect`] replaces them.
    fn close(&mut self) {
        if let Some(source) = self.source.take() {
            source.close();
        }
    }
}

/// Opens the event stream at `path` (under the API base) while the calling component lives,
/// calling `on_event(name, data)` for each event named in `names`. After `last` (if given)
/// the stream is closed and not reopened. Returns the connection's state.
pub fn use_event_stream(
    path: String,
    names: &'static [&'static str],
    last: Option<&'static str>,
    on_event: impl Fn(&str, &str) + 'static,
) -> ReadSignal<Live> {
    let (live, set_live) = signal(Live::Connecting);
    let stream = Rc::new(RefCell::new(Stream {
        path,
        names,
        last,
        on_event: Box::new(on_event),
        live: set_live,
        source: None,
        listeners: Vec::new(),
        on_open: None,
        on_error: None,
        last_id: String::new(),
        retry: Duration::from_millis(500),
        stopped: false,
    }));
    connect(&stream);
    let stream = SendWrapper::new(stream);
    on_cleanup(move || {
        let mut s = stream.borrow_mut();
        s.stopped = true;
        s.close();
        // Dropped after the current event, which may be one of these callbacks.
        let callbacks = (
            std::mem::take(&mut s.listeners),
            s.on_open.take(),
            s.on_error.take(),
        );
        set_timeout(move || drop(callbacks), Duration::ZERO);
    });
    live
}

fn connect(stream_rc: &Rc<RefCell<Stream>>) {
    let mut stream = stream_rc.borrow_mut();
    if stream.stopped {
        return;
    }
    stream.close();
    stream.listeners.clear();
    let mut url = api::url(&stream.path);
    if !stream.last_id.is_empty() {
        let sep = if url.contains('?') { '&' } else { '?' };
        url = format!("{url}{sep}last_event_id={}", api::encode(&stream.last_id));
    }
    let url = api::with_token(&url);
    let Ok(source) = EventSource::new(&url) else {
        stream.live.set(Live::Retrying);
        drop(stream);
        retry_later(stream_rc);
        return;
    };
    for &name in stream.names {
        let weak = Rc::downgrade(stream_rc);
        let listener = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let Some(stream) = weak.upgrade() else { return };
            let data = event.data().as_string().unwrap_or_default();
            {
                let mut s = stream.borrow_mut();
                let id = event.last_event_id();
                if !id.is_empty() {
                    s.last_id = id;
                }
            }
            (stream.borrow().on_event)(name, &data);
            let mut s = stream.borrow_mut();
            if s.last == Some(name) {
                s.stopped = true;
                s.close();
                s.live.set(Live::Done);
            }
        });
        let _ = source.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        stream.listeners.push(listener);
    }
    let weak = Rc::downgrade(stream_rc);
    let on_open = Closure::<dyn FnMut()>::new(move || {
        if let Some(stream) = weak.upgrade() {
            let mut s = stream.borrow_mut();
            s.retry = Duration::from_millis(500);
            s.live.set(Live::Open);
        }
    });
    let weak = Rc::downgrade(stream_rc);
    let on_error = Closure::<dyn FnMut()>::new(move || {
        let Some(stream) = weak.upgrade() else { return };
        let closed = {
            let s = stream.borrow();
            if s.stopped {
                return;
            }
            s.live.set(Live::Retrying);
            s.source
                .as_ref()
                .is_none_or(|source| source.ready_state() == EventSource::CLOSED)
        };
        // CONNECTING: the browser retries by itself. CLOSED: it gave up; open a new one.
        if closed {
            retry_later(&stream);
        }
    });
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    stream.on_open = Some(on_open);
    stream.on_error = Some(on_error);
    stream.source = Some(source);
}

fn retry_later(stream_rc: &Rc<RefCell<Stream>>) {
    let delay = {
        let mut s = stream_rc.borrow_mut();
        s.close();
        let delay = s.retry;
        s.retry = (s.retry * 2).min(MAX_RETRY);
        delay
    };
    let weak = Rc::downgrade(stream_rc);
    set_timeout(
        move || {
            if let Some(stream) = weak.upgrade() {
                connect(&stream);
            }
        },
        delay,
    );
}

/// A signal of the current time in milliseconds, ticking every `every` while the component
/// lives: for ages ("3 s ago") that must move without new data.
pub fn use_clock(every: Duration) -> ReadSignal<i64> {
    let (now, set_now) = signal(js_sys::Date::now() as i64);
    if let Ok(handle) =
        set_interval_with_handle(move || set_now.set(js_sys::Date::now() as i64), every)
    {
        on_cleanup(move || handle.clear());
    }
    now
}
