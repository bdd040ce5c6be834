import { connect, type PropertyUpdateEvent, type RealtimeClient } from "@oikion/realtime";

/**
 * Live property changes of one organization. `gateways` lists the realtime
 * gateway replicas (or [""] for the page's own origin): the client moves to
 * the next one when one is down. The user is identified by the Auth.js
 * session cookie, so the gateway needs the app's AUTH_SECRET (JWT sessions)
 * or DATABASE_URL (database sessions).
 */
export function watchProperties(
  gateways: string[],
  organizationId: string,
  render: (event: PropertyUpdateEvent) => void,
  refetch: () => void,
): RealtimeClient {
  const realtime = connect({
    url: gateways,
    organizationId,
    channels: ["property"],
    withCredentials: true, // send the session cookie to the gateway's origin
    persist: true, // a page reload resumes after the last event seen
  });
  realtime.on("property.update", (event) => {
    // event.payload is typed: propertyId, operation, changes, updatedFields…
    render(event);
  });
  // The gateway's history no longer reaches back to our last event
  // (offline too long): reload the data, then carry on live.
  realtime.onResync(() => refetch());
  realtime.onStateChange((state) => console.debug("realtime:", state));
  // 401 (not signed in) or 403 (not a member): final, the client has
  // stopped; sign the user in or pick another organization, then reconnect.
  realtime.onError((error) => console.warn("realtime refused:", error.status, error.message));
  return realtime;
}
