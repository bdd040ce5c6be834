// @vitest-environment jsdom
import { act, cleanup, render, screen, waitFor } from "@testing-library/react";
import { StrictMode, useState } from "react";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

import type { PropertyUpdateEvent, RealtimeEvent } from "../src/index.js";
import {
  RealtimeProvider,
  openStreamCount,
  usePropertyEvents,
  useRealtime,
  type UseRealtimeOptions,
} from "../src/react.js";
import { FakeEventSource, fakeFetch, propertyEvent } from "./fakes.js";

(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;

const fetch = fakeFetch();

function Feed(props: { org: string; id: string } & UseRealtimeOptions) {
  const { org, id, ...options } = props;
  const [seen, setSeen] = useState<string[]>([]);
  const { state } = useRealtime(org, {
    ...options,
    onEvent: (e: RealtimeEvent) => setSeen((s) => [...s, `${e.type}:${e.id}`]),
  });
  return (
    <p data-testid={id}>
      {state} {seen.join(" ")}
    </p>
  );
}

function Properties(props: { org: string; id: string }) {
  const [seen, setSeen] = useState<string[]>([]);
  usePropertyEvents(props.org, (e: PropertyUpdateEvent) =>
    setSeen((s) => [...s, String(e.payload.propertyId)]),
  );
  return <p data-testid={props.id}>{seen.join(" ")}</p>;
}

function wrap(children: React.ReactNode) {
  return (
    <RealtimeProvider url="http://gw.test" EventSource={FakeEventSource} fetch={fetch}>
      {children}
    </RealtimeProvider>
  );
}

beforeEach(() => {
  FakeEventSource.reset();
  fetch.requests.length = 0;
});

afterEach(async () => {
  cleanup();
  await waitFor(() => expect(openStreamCount()).toBe(0));
});

describe("useRealtime", () => {
  it("shares one stream per organization and channels, however many components use it", async () => {
    render(
      wrap(
        <>
          <Feed id="a" org="org1" channels={["property", "user"]} />
          <Feed id="b" org="org1" channels={["user", "property"]} />
          <Feed id="c" org="org1" channels={["system"]} />
          <Feed id="d" org="org2" channels={["property", "user"]} />
        </>,
      ),
    );
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(3));
    const streams = FakeEventSource.instances.map((es) => es.url.search).sort();
    expect(streams).toEqual([
      "?organizationId=org1&channel=property%2Cuser",
      "?organizationId=org1&channel=system",
      "?organizationId=org2&channel=property%2Cuser",
    ]);
    const shared = FakeEventSource.instances.find((es) => es.url.search.includes("org1&channel=property"));
    act(() => {
      shared?.accept();
    });
    await waitFor(() => expect(screen.getByTestId("a").textContent).toBe("open "));
    expect(screen.getByTestId("b").textContent).toBe("open ");
    expect(screen.getByTestId("c").textContent).toBe("connecting ");
    act(() => {
      shared?.send(propertyEvent("7-0"));
    });
    expect(screen.getByTestId("a").textContent).toBe("open property.update:7-0");
    expect(screen.getByTestId("b").textContent).toBe("open property.update:7-0");
    expect(screen.getByTestId("d").textContent).toBe("connecting ");
  });

  it("closes the stream when the last component unmounts, telling the gateway", async () => {
    function Page(props: { show: number }) {
      return wrap(
        <>
          {props.show > 0 && <Feed id="a" org="org1" />}
          {props.show > 1 && <Feed id="b" org="org1" />}
        </>,
      );
    }
    const view = render(<Page show={2} />);
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
    const es = FakeEventSource.last;
    act(() => {
      es.accept("conn-7");
    });
    view.rerender(<Page show={1} />);
    // Still used by one component: stays open across a macrotask.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(es.closed).toBe(false);
    expect(openStreamCount()).toBe(1);
    view.rerender(<Page show={0} />);
    await waitFor(() => expect(es.closed).toBe(true));
    expect(openStreamCount()).toBe(0);
    expect(fetch.requests.map((r) => [r.init?.method, r.url])).toEqual([
      ["DELETE", "http://gw.test/api/realtime/stream?connectionId=conn-7"],
    ]);
  });

  it("keeps one connection through StrictMode's unmount and remount", async () => {
    render(<StrictMode>{wrap(<Feed id="a" org="org1" />)}</StrictMode>);
    await waitFor(() => expect(openStreamCount()).toBe(1));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(FakeEventSource.open()).toHaveLength(1);
  });

  it("opens nothing while disabled or without an organization", async () => {
    render(
      wrap(
        <>
          <Feed id="a" org="" />
          <Feed id="b" org="org1" enabled={false} />
        </>,
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(screen.getByTestId("a").textContent).toBe("closed ");
  });

  it("calls the latest onEvent without reopening the stream", async () => {
    function Counter() {
      const [n, setN] = useState(0);
      useRealtime("org1", { onEvent: () => setN(n + 1) }); // a new closure each render
      return <p data-testid="n">{n}</p>;
    }
    render(wrap(<Counter />));
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
    const es = FakeEventSource.last;
    act(() => {
      es.accept();
      es.send(propertyEvent("1-0"));
    });
    act(() => {
      es.send(propertyEvent("2-0"));
    });
    expect(screen.getByTestId("n").textContent).toBe("2");
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});

describe("usePropertyEvents", () => {
  it("subscribes to the property channel and passes only property.update", async () => {
    render(
      wrap(
        <>
          <Properties id="x" org="org1" />
          <Properties id="y" org="org1" />
        </>,
      ),
    );
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
    const es = FakeEventSource.last;
    expect(es.url.searchParams.get("channel")).toBe("property");
    act(() => {
      es.accept();
      es.send(propertyEvent("3-0", "p3"));
      es.send({ ...propertyEvent("4-0"), type: "data.sync", payload: { reason: "gap", lastEventId: null } });
      es.send(propertyEvent("5-0", "p5"));
    });
    expect(screen.getByTestId("x").textContent).toBe("p3 p5");
    expect(screen.getByTestId("y").textContent).toBe("p3 p5");
  });

  it("passes a final refusal (403) to onError and returns it as `error`", async () => {
    const errors: number[] = [];
    function Guarded() {
      const { state, error } = useRealtime("org9", { onError: (e) => errors.push(e.status) });
      return <p data-testid="g">{`${state} ${error?.status ?? "-"} ${error?.message ?? ""}`}</p>;
    }
    fetch.status = 403;
    try {
      render(wrap(<Guarded />));
      await waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
      act(() => {
        FakeEventSource.last.refuse();
      });
      await waitFor(() => expect(screen.getByTestId("g").textContent).toBe("closed 403 Forbidden"));
      expect(errors).toEqual([403]);
      expect(FakeEventSource.instances).toHaveLength(1);
    } finally {
      fetch.status = 204;
    }
  });
});
