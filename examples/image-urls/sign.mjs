import { createHmac } from "node:crypto";

// The path of a pixelmesh image URL: /img/<signature>/<pipeline>/<source>.
export function imageUrl(key, pipeline, source) {
  const signed = `/${pipeline}/${source}`;
  const signature = createHmac("sha256", key).update(signed).digest("base64url");
  return `/img/${signature}${signed}`;
}

// An http(s) URL as an image URL's source.
export function urlSource(url) {
  return "url/" + Buffer.from(url).toString("base64url");
}
