// Connects the official Massive JS client to the gateway exactly as a customer would (websocketClient(key, base)),
// subscribes to the given params once authenticated, and prints every event as one JSON line until it has seen
// COUNT trades, then closes. Usage: node stream_trades.mjs BASE_URL KEY PARAMS COUNT
import { websocketClient } from "@massive.com/client-js";

const [baseUrl, key, params, count] = process.argv.slice(2);
const ws = websocketClient(key, baseUrl).options();
let trades = 0;

ws.onmessage = (message) => {
  for (const event of JSON.parse(message.data)) {
    console.log(JSON.stringify(event));
    if (event.ev === "status" && event.status === "auth_success") {
      ws.send(JSON.stringify({ action: "subscribe", params }));
    } else if (event.ev === "T" && ++trades >= Number(count)) {
      ws.close();
    }
  }
};
ws.onclose = (event) => {
  console.log(JSON.stringify({ closed: event.code }));
  process.exit(0);
};
