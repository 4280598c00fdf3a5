"""The namespace lab (`testbed lab up --netns`, root): the lab's hosts in network
namespaces of their own, the phone in another, joined through a gateway that is the hotspot
and the carrier NAT, over real links with real impairments."""
