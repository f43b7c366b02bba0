// Prints imageUrl(key, pipeline, source) for the tests: node sign_cli.mjs KEY PIPELINE SOURCE
import { imageUrl } from "./sign.mjs";

const [key, pipeline, source] = process.argv.slice(2);
console.log(imageUrl(key, pipeline, source));
