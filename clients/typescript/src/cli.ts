// node dist/cli.js push|query|watch-alerts --address HOST:PORT --ca F --cert F --key F [...]
import { parseArgs } from "node:util";

import { EdgeBot } from "./client.js";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    address: { type: "string" },
    ca: { type: "string" },
    cert: { type: "string" },
    key: { type: "string" },
    "agent-id": { type: "string", default: "typescript-client" },
    message: { type: "string", multiple: true, default: [] },
    service: { type: "string", default: "ts-client" },
    host: { type: "string", default: "node" },
    text: { type: "string", default: "" },
    count: { type: "string", default: "1" },
  },
});

function required(name: "address" | "ca" | "cert" | "key"): string {
  const value = values[name];
  if (!value) {
    console.error(`edgebot-client: --${name} is required`);
    process.exit(2);
  }
  return value;
}

async function main(): Promise<number> {
  const command = positionals[0];
  const client = new EdgeBot({ ca: required("ca"), cert: required("cert"), key: required("key") });
  const address = required("address");
  if (command === "push") {
    const events = (values.message as string[]).map((message) => ({
      message,
      service: values.service as string,
      host: values.host as string,
    }));
    console.log(JSON.stringify(await client.push(address, values["agent-id"] as string, events)));
    return 0;
  }
  if (command === "query") {
    console.log(JSON.stringify(await client.queryEvents(address, { text: values.text })));
    return 0;
  }
  if (command === "watch-alerts") {
    const wanted = Number(values.count);
    let seen = 0;
    const stream = client.watchAlerts(address, {}, (alert) => {
      console.log(JSON.stringify(alert));
      seen += 1;
      if (seen >= wanted) stream.cancel();
    });
    return await new Promise((resolve) => {
      stream.on("error", (error: { code?: number }) => resolve(error.code === 1 ? 0 : 1));
      stream.on("end", () => resolve(0));
    });
  }
  console.error("usage: cli.js push|query|watch-alerts --address HOST:PORT --ca F --cert F --key F");
  return 2;
}

main().then(
  (code) => process.exit(code),
  (error: Error) => {
    console.error(`edgebot-client: ${error.message}`);
    process.exit(1);
  },
);
