// Voice: a microphone button that records a turn and sends it to the instance's voice route,
// and replies heard in the character's voice.

import { request } from "./api.js";
import { h } from "./dom.js";
import { t } from "./i18n.js";

// The button: press to record, press again to send.
export function recorder(instance, { started, spoken, failed }) {
  const button = h("button", { type: "button", class: "mic", "aria-pressed": "false" }, "🎤 ", t("speak"));
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    button.disabled = true;
    button.title = t("noMicrophone");
    return button;
  }
  let recording = null;
  button.addEventListener("click", async () => {
    if (recording) {
      recording.stop();
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recording = new MediaRecorder(stream);
      recording.addEventListener("dataavailable", (event) => chunks.push(event.data));
      recording.addEventListener("stop", async () => {
        stream.getTracks().forEach((track) => track.stop());
        recording = null;
        button.setAttribute("aria-pressed", "false");
        const clip = new Blob(chunks, { type: chunks[0] ? chunks[0].type : "audio/webm" });
        const form = new FormData();
        form.append("file", clip, "speech.webm");
        form.append("response_format", "mp3");
        try {
          const response = await request("POST", `/v1/instances/${instance.id}/voice`, { form });
          spoken(await response.json());
        } catch (error) {
          failed(error);
        }
      });
      recording.start();
      button.setAttribute("aria-pressed", "true");
      started();
    } catch (error) {
      failed(error);
    }
  });
  return button;
}

// Plays a voice turn's spoken reply, or asks alma to speak `text` in the instance's voice;
// `button`, when given, is pressed while it plays; `holder`, when given, keeps the player (to
// hear it again).
export async function hearReply(answer, text, instance, button, holder) {
  let blob;
  if (answer) {
    const bytes = Uint8Array.from(atob(answer.audio_base64), (c) => c.charCodeAt(0));
    blob = new Blob([bytes], { type: `audio/${answer.audio_format}` });
  } else {
    const response = await request("POST", "/v1/audio/speech", {
      body: { input: text, voice: instance.id, response_format: "mp3" },
    });
    blob = await response.blob();
  }
  const audio = h("audio", { class: "spoken", controls: Boolean(holder), src: URL.createObjectURL(blob) });
  if (holder) holder.append(audio);
  audio.addEventListener("ended", () => {
    if (!holder) URL.revokeObjectURL(audio.src);
    if (button) button.setAttribute("aria-pressed", "false");
  });
  await audio.play();
  if (button) button.setAttribute("aria-pressed", "true");
}
