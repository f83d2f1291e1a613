"use strict";
// The web chat's page: shows the chat's messages as the server keeps them (new, edited, deleted) and
// sends what the person types, taps, attaches or records. All text goes in as text, never as HTML.
const messages = document.getElementById("messages");
const noticeBox = document.getElementById("notice");
const textInput = document.getElementById("text");
const fileInput = document.getElementById("file");
const recordButton = document.getElementById("record");
const shown = new Map();
let cursor = 0;

function mediaUrl(fileId) { return "/chat/api/media/" + encodeURIComponent(fileId); }

function render(message) {
  const box = document.createElement("div");
  box.className = "message" + (message.from && message.from.is_bot ? "" : " mine");
  box.dataset.id = String(message.message_id);
  if (message.photo) {
    const img = document.createElement("img");
    img.src = mediaUrl(message.photo[message.photo.length - 1].file_id);
    img.alt = "photo";
    box.append(img);
  }
  if (message.video) {
    const video = document.createElement("video");
    video.src = mediaUrl(message.video.file_id);
    video.controls = true;
    box.append(video);
  }
  for (const kind of ["voice", "audio"]) {
    if (message[kind]) {
      const audio = document.createElement("audio");
      audio.src = mediaUrl(message[kind].file_id);
      audio.controls = true;
      audio.className = kind;
      box.append(audio);
    }
  }
  if (message.document) {
    const link = document.createElement("a");
    link.href = mediaUrl(message.document.file_id);
    link.textContent = "📄 " + (message.document.file_name || "file");
    link.download = message.document.file_name || "file";
    box.append(link);
  }
  const text = message.text || message.caption;
  if (text) {
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    box.append(body);
  }
  const rows = (message.reply_markup && message.reply_markup.inline_keyboard) || [];
  if (rows.length) {
    const keyboard = document.createElement("div");
    keyboard.className = "keyboard";
    for (const row of rows) {
      for (const button of row) {
        if (!button.callback_data) continue;
        const tap = document.createElement("button");
        tap.type = "button";
        tap.textContent = button.text;
        tap.addEventListener("click", () => post("/chat/api/press",
          { message_id: message.message_id, data: button.callback_data }));
        keyboard.append(tap);
      }
    }
    box.append(keyboard);
  }
  return box;
}

function apply(event) {
  if (event.type === "message" || event.type === "edit") {
    const box = render(event.message);
    const old = shown.get(event.message.message_id);
    if (old) old.replaceWith(box); else messages.append(box);
    shown.set(event.message.message_id, box);
    messages.scrollTop = messages.scrollHeight;
  } else if (event.type === "delete") {
    const old = shown.get(event.message_id);
    if (old) old.remove();
    shown.delete(event.message_id);
  } else if (event.type === "notice") {
    noticeBox.textContent = event.text;
    noticeBox.hidden = false;
    setTimeout(() => { noticeBox.hidden = true; }, 3000);
  }
}

async function poll() {
  for (;;) {
    try {
      const answer = await fetch("/chat/api/events?wait=25&after=" + cursor, { cache: "no-store" });
      if (!answer.ok) throw new Error(String(answer.status));
      const body = await answer.json();
      for (const event of body.events) {
        apply(event);
        cursor = Math.max(cursor, event.cursor);
      }
    } catch (error) {
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function post(url, payload) {
  const answer = await fetch(url, payload instanceof FormData
    ? { method: "POST", body: payload }
    : { method: "POST", body: JSON.stringify(payload), headers: { "Content-Type": "application/json" } });
  if (!answer.ok) apply({ type: "notice", text: "Not sent (" + answer.status + ")" });
}

document.getElementById("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textInput.value.trim();
  const file = fileInput.files && fileInput.files[0];
  if (file) {
    const form = new FormData();
    form.append("text", text);
    form.append("file", file, file.name);
    fileInput.value = "";
    textInput.value = "";
    textInput.placeholder = textInput.dataset.placeholder;
    post("/chat/api/send", form);
  } else if (text) {
    textInput.value = "";
    post("/chat/api/send", { text });
  }
});

textInput.dataset.placeholder = textInput.placeholder; // put back once an attached file is sent
fileInput.addEventListener("change", () => {
  if (fileInput.files && fileInput.files[0]) {
    textInput.placeholder = "Caption for " + fileInput.files[0].name + " (e.g. /animate), then Send";
    textInput.focus();
  }
});

// A voice message: recorded in the browser, sent as audio when the button is tapped again.
let recorder = null;
recordButton.addEventListener("click", async () => {
  if (recorder) { recorder.stop(); return; }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const chunks = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      const type = (recorder.mimeType || "audio/webm").split(";")[0];
      recorder = null;
      recordButton.classList.remove("on");
      const form = new FormData();
      form.append("text", textInput.value.trim());
      textInput.value = "";
      form.append("file", new Blob(chunks, { type }), "voice." + (type.split("/")[1] || "webm"));
      post("/chat/api/send", form);
    });
    recorder.start();
    recordButton.classList.add("on");
  } catch (error) {
    apply({ type: "notice", text: "No microphone: " + error });
  }
});

poll();
